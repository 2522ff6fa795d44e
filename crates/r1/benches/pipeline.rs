//! The pretraining stage's own costs beside the training step (`cargo bench -p sft`): building a
//! batch from the corpus (generate, tokenise, pack) and the greedy evaluation's generation.
//! `cargo bench -p r1`
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use r1::pipeline::pretrain::{PretrainConfig, Stream, answer_accuracy};
use sft::init_scaled;
use tensor::Device;

fn pipeline(c: &mut Criterion) {
    let mut cfg = PretrainConfig::default();
    let stream = Stream::new(&cfg).unwrap();
    cfg.model.vocab_size = stream.tok.vocab_size();
    let mut g = c.benchmark_group("pretrain");
    g.throughput(Throughput::Elements((cfg.rows * cfg.seq_len) as u64));
    let mut step = 0;
    g.bench_function("batch_8x128", |b| {
        b.iter(|| {
            step += 1;
            stream.batch(step).unwrap()
        })
    });
    let model = init_scaled(&cfg.model, 0, cfg.embed_std, 0, &Device::Cpu).unwrap();
    let problems = stream.corpus.task.test_problems(32, 1).unwrap();
    g.sample_size(10);
    g.throughput(Throughput::Elements(32));
    g.bench_function("greedy_eval_32_problems_24_tokens", |b| {
        b.iter(|| answer_accuracy(&model, &stream.tok, &problems, "think", "<think>", 24).unwrap())
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
