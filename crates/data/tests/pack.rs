use data::pack::{Batch, IGNORE_INDEX, Overflow, Packer, TokenDoc, pack};
use proptest::prelude::*;

const PAD: u32 = 0;

/// Documents with globally unique token ids (1000·doc + index) so every packed token is traceable.
fn docs_strategy() -> impl Strategy<Value = Vec<TokenDoc>> {
    proptest::collection::vec((1usize..40, proptest::option::of(0usize..40)), 0..12).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(d, (len, prompt))| {
                let ids: Vec<u32> = (0..len).map(|j| 1000 * (d as u32 + 1) + j as u32).collect();
                let loss_mask = prompt.map(|p| (0..len).map(|j| j >= p.min(len)).collect());
                TokenDoc { ids, loss_mask }
            })
            .collect()
    })
}

fn origin(id: u32) -> (usize, usize) {
    ((id / 1000 - 1) as usize, (id % 1000) as usize)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn packing_invariants(docs in docs_strategy(), seq_len in 1usize..48, split in any::<bool>()) {
        let overflow = if split { Overflow::Split } else { Overflow::Truncate };
        let seqs = pack(&docs, seq_len, PAD, overflow).unwrap();
        let mut seen = std::collections::HashSet::new();
        for s in &seqs {
            prop_assert_eq!(s.ids.len(), seq_len);
            prop_assert_eq!(s.targets.len(), seq_len);
            prop_assert_eq!(s.positions.len(), seq_len);
            prop_assert_eq!(s.segment_ids.len(), seq_len);
            prop_assert!(s.segment_ids.iter().any(|&g| g != 0), "no empty sequence");
            for i in 0..seq_len {
                let (id, seg) = (s.ids[i], s.segment_ids[i]);
                if seg == 0 {
                    // Padding: pad id, ignored, and only at the end.
                    prop_assert_eq!(id, PAD);
                    prop_assert_eq!(s.targets[i], IGNORE_INDEX);
                    prop_assert!(s.segment_ids[i..].iter().all(|&g| g == 0));
                    continue;
                }
                prop_assert!(seen.insert(id), "token {} appears twice", id);
                // Positions restart at 0 for each segment and count up within it.
                let new_segment = i == 0 || s.segment_ids[i - 1] != seg;
                if new_segment {
                    prop_assert_eq!(s.positions[i], 0);
                    if i > 0 { prop_assert!(seg > s.segment_ids[i - 1]); }
                } else {
                    prop_assert_eq!(s.positions[i], s.positions[i - 1] + 1);
                }
                // Every counted target is the true next token of the same document and a loss token.
                let t = s.targets[i];
                if t != IGNORE_INDEX {
                    let (d, j) = origin(id);
                    let doc = &docs[d];
                    prop_assert!(j + 1 < doc.ids.len());
                    prop_assert_eq!(t, i64::from(doc.ids[j + 1]));
                    prop_assert!(doc.loss_mask.as_ref().is_none_or(|m| m[j + 1]));
                    prop_assert!(i + 1 < seq_len && s.segment_ids[i + 1] == seg && s.ids[i + 1] == doc.ids[j + 1]);
                } else if i + 1 < seq_len && s.segment_ids[i + 1] == seg {
                    // Ignored inside a segment only where the next token is masked.
                    let (d, j) = origin(id);
                    prop_assert!(docs[d].loss_mask.as_ref().is_some_and(|m| !m[j + 1]));
                }
            }
        }
        // Which tokens survive: all of them with Split, the first seq_len of each with Truncate.
        for (d, doc) in docs.iter().enumerate() {
            for (j, &id) in doc.ids.iter().enumerate() {
                let kept = split || j < seq_len;
                prop_assert_eq!(seen.contains(&id), kept, "doc {} token {}", d, j);
            }
        }
        // Greedy: a sequence is closed only when the next piece does not fit.
        let total: usize = docs.iter().map(|d| if split { d.ids.len() } else { d.ids.len().min(seq_len) }).sum();
        prop_assert!(seqs.len() * seq_len >= total);
    }
}

#[test]
fn split_and_truncate_long_document() {
    let doc = TokenDoc::new((1..=10).collect());
    let t = pack(std::slice::from_ref(&doc), 4, PAD, Overflow::Truncate).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].ids, vec![1, 2, 3, 4]);
    assert_eq!(t[0].targets, vec![2, 3, 4, IGNORE_INDEX]);
    let s = pack(&[doc], 4, PAD, Overflow::Split).unwrap();
    assert_eq!(
        s.iter().map(|p| p.ids.clone()).collect::<Vec<_>>(),
        vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10, 0, 0]]
    );
    assert_eq!(s[2].targets, vec![10, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]);
    assert_eq!(s[2].positions, vec![0, 1, 0, 1]);
    assert_eq!(s[2].segment_ids, vec![1, 1, 0, 0]);
}

#[test]
fn two_documents_and_prompt_mask() {
    let a = TokenDoc::prompt_completion(&[10, 11], &[12, 13]);
    let b = TokenDoc::new(vec![20, 21]);
    let p = pack(&[a, b], 8, PAD, Overflow::Truncate).unwrap();
    assert_eq!(p.len(), 1);
    let p = &p[0];
    assert_eq!(p.ids, vec![10, 11, 12, 13, 20, 21, 0, 0]);
    // 10→11 is a prompt token (masked); 11→12 and 12→13 count; 13→20 crosses documents.
    assert_eq!(p.targets, vec![IGNORE_INDEX, 12, 13, IGNORE_INDEX, 21, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]);
    assert_eq!(p.positions, vec![0, 1, 2, 3, 0, 1, 0, 1]);
    assert_eq!(p.segment_ids, vec![1, 1, 1, 1, 2, 2, 0, 0]);
    assert_eq!(p.key_padding(), vec![true, true, true, true, true, true, false, false]);
    assert_eq!(p.loss_tokens(), 3);
}

#[test]
fn streaming_packer_and_batch() {
    let mut packer = Packer::new(4, PAD, Overflow::Truncate).unwrap();
    assert!(packer.push(&TokenDoc::new(vec![1, 2, 3])).unwrap().is_empty());
    // Does not fit in the one slot left: the first sequence is closed and padded.
    let done = packer.push(&TokenDoc::new(vec![4, 5])).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].ids, vec![1, 2, 3, 0]);
    // Filling a sequence exactly closes it at once.
    let done2 = packer.push(&TokenDoc::new(vec![6, 7])).unwrap();
    assert_eq!(done2[0].ids, vec![4, 5, 6, 7]);
    assert!(packer.flush().is_none());
    let b = Batch::stack(&[done[0].clone(), done2[0].clone()]).unwrap();
    assert_eq!((b.batch, b.seq_len), (2, 4));
    assert_eq!(b.ids, vec![1, 2, 3, 0, 4, 5, 6, 7]);
    assert_eq!(b.segment_ids, vec![1, 1, 1, 0, 1, 1, 2, 2]);
}

#[test]
fn bad_inputs_are_errors() {
    assert!(Packer::new(0, PAD, Overflow::Split).is_err());
    let bad = TokenDoc { ids: vec![1, 2, 3], loss_mask: Some(vec![true]) };
    let e = pack(&[bad], 8, PAD, Overflow::Split).unwrap_err().to_string();
    assert!(e.contains("loss_mask"), "{e}");
    assert!(Batch::stack(&[]).is_err());
}

#[test]
fn encode_sft_masks_the_prompt_and_ends_with_eos() {
    let tok = data::Tokenizer::project();
    let p = data::tasks::Problem::parse("7-3+2+0").unwrap();
    let d = TokenDoc::encode_sft(&tok, &p.prompt, &p.cot).unwrap();
    let n_prompt = tok.encode(&p.prompt).unwrap().len();
    let mask = d.loss_mask.clone().unwrap();
    assert_eq!(d.ids.len(), n_prompt + tok.encode(&p.cot).unwrap().len() + 1);
    assert!(mask[..n_prompt].iter().all(|m| !m) && mask[n_prompt..].iter().all(|&m| m));
    assert_eq!(*d.ids.last().unwrap(), tok.eos_id());
    assert_eq!(tok.decode(&d.ids).unwrap(), format!("{}{}", p.prompt, p.completion()));
    // Packed: targets start at the first completion token ("<think>") and end with <eos>.
    let s = &pack(&[d], 64, tok.pad_id(), Overflow::Truncate).unwrap()[0];
    let first = s.targets.iter().position(|&t| t != IGNORE_INDEX).unwrap();
    assert_eq!(first, n_prompt - 1);
    assert_eq!(s.targets[first], i64::from(tok.token_id("<think>").unwrap()));
    assert_eq!(s.loss_tokens(), mask.iter().filter(|&&m| m).count());
    assert!(TokenDoc::encode(&tok, "a ≠ b").is_err());
}
