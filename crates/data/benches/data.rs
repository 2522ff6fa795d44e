//! Criterion benches: corpus generation, tokenisation, packing, tokenise + pack (throughput in documents).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use data::Tokenizer;
use data::pack::{Overflow, TokenDoc, pack};
use data::tasks::{ChainTask, Corpus, CorpusMix};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::hint::black_box;

const DOCS: usize = 1000;
const SEQ_LEN: usize = 256;

fn bench(c: &mut Criterion) {
    let tok = Tokenizer::project();
    let corpus = Corpus::new(ChainTask::new(4).expect("level"), CorpusMix::default()).expect("corpus");
    let docs = corpus.documents(DOCS, 0).expect("documents");
    let ids: Vec<TokenDoc> = docs.iter().map(|d| TokenDoc::new(tok.encode(&d.text).expect("encode"))).collect();

    let mut g = c.benchmark_group("data");
    g.throughput(Throughput::Elements(DOCS as u64));
    g.bench_function("corpus_generate_1000_docs", |b| {
        let mut rng = StdRng::seed_from_u64(1);
        b.iter(|| (0..DOCS).map(|_| corpus.document(&mut rng).expect("doc")).collect::<Vec<_>>())
    });
    g.bench_function("tokenise_1000_docs", |b| {
        b.iter(|| docs.iter().map(|d| tok.encode(black_box(&d.text)).expect("encode")).collect::<Vec<_>>())
    });
    g.bench_function("pack_1000_docs_seq256", |b| {
        b.iter(|| pack(black_box(&ids), SEQ_LEN, tok.pad_id(), Overflow::Truncate).expect("pack"))
    });
    g.bench_function("tokenise_and_pack_1000_docs_seq256", |b| {
        b.iter(|| {
            let encoded: Vec<TokenDoc> =
                docs.iter().map(|d| TokenDoc::new(tok.encode(black_box(&d.text)).expect("encode"))).collect();
            pack(&encoded, SEQ_LEN, tok.pad_id(), Overflow::Truncate).expect("pack")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
