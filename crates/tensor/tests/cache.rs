//! The preallocated-cache ops on every device: in-place row writes (with the overflow and
//! shared-buffer errors) and attention over a cache prefix against the plain attention op.

mod common;
use common::*;
use tensor::ops::attention::{AttnMask, attention};
use tensor::ops::cache::{attention_cached, write_at};
use tensor::ops::shape::{cat, narrow};
use tensor::{DType, Tensor};

#[test]
fn write_at_fills_rows_in_place_and_refuses_overflow_and_sharing() {
    for dev in devices() {
        for b in [1, 2] {
            let mut buf = Tensor::zeros(&[b, 5, 3], DType::F32, &dev).unwrap();
            let (a, _) = rand_on(&[b, 2, 3], 1, &dev);
            let (c, _) = rand_on(&[b, 3, 3], 2, &dev);
            write_at(&mut buf, 1, 0, &a).unwrap();
            write_at(&mut buf, 1, 2, &c).unwrap();
            let want = cat(&[a.clone(), c.clone()], 1).unwrap().to_vec_f64().unwrap();
            assert_eq!(buf.to_vec_f64().unwrap(), want, "{dev:?} b={b}");
            // Past the end: an error naming the capacity, and nothing written.
            let e = write_at(&mut buf, 1, 4, &a).unwrap_err().to_string();
            assert!(e.contains("capacity exceeded"), "{e}");
            assert_eq!(buf.to_vec_f64().unwrap(), want);
            // A live clone would see the write: refused.
            let alias = buf.clone();
            let e = write_at(&mut buf, 1, 0, &a).unwrap_err().to_string();
            assert!(e.contains("shared"), "{e}");
            drop(alias);
            write_at(&mut buf, 1, 3, &a).unwrap();
            // Wrong shape off the written dim, wrong dtype.
            assert!(write_at(&mut buf, 1, 0, &Tensor::zeros(&[b, 1, 4], DType::F32, &dev).unwrap()).is_err());
            if dev.is_cpu() {
                assert!(write_at(&mut buf, 1, 0, &Tensor::zeros(&[b, 1, 3], DType::F64, &dev).unwrap()).is_err());
            }
        }
    }
}

#[test]
fn attention_cached_equals_attention_over_the_prefix() {
    for dev in devices() {
        let (b, s, d, cap, len, dv) = (2, 4, 10, 7, 5, 6);
        let (q, _) = rand_on(&[b, s, d], 3, &dev);
        let (kv, _) = rand_on(&[b, cap, d], 4, &dev);
        let pad: Vec<bool> = (0..b * len).map(|i| i % 5 != 1).collect();
        for padding in [None, Some(pad.as_slice())] {
            let got = attention_cached(&q, &kv, len, dv, 0.3, padding).unwrap();
            assert_eq!(got.shape(), &vec![b, s, dv]);
            let k = narrow(&kv, 1, 0, len).unwrap();
            let v = narrow(&k, 2, 0, dv).unwrap();
            let mask = AttnMask { causal: false, key_padding: padding.map(<[bool]>::to_vec), segment_ids: None };
            let (want, _) = attention(
                &q.reshape(&[b, 1, s, d]).unwrap(),
                &k.reshape(&[b, 1, len, d]).unwrap(),
                &v.reshape(&[b, 1, len, dv]).unwrap(),
                0.3,
                &mask,
            )
            .unwrap();
            let err = rel_err(&got.to_vec_f64().unwrap(), &want.to_vec_f64().unwrap());
            assert!(err < tol(&dev), "{dev:?} padding={} err {err}", padding.is_some());
        }
        // The prefix bound and the mask length are checked.
        assert!(attention_cached(&q, &kv, cap + 1, dv, 0.3, None).is_err());
        assert!(attention_cached(&q, &kv, len, dv, 0.3, Some(&pad[1..])).is_err());
    }
}

#[test]
fn attention_cached_f64_and_bf16_on_the_cpu() {
    let dev = tensor::Device::Cpu;
    let (b, s, d, cap, len, dv) = (1, 3, 8, 9, 9, 5);
    for dt in [DType::F64, DType::BF16] {
        let q = Tensor::randn(&[b, s, d], 1.0, 5, dt, &dev).unwrap();
        let kv = Tensor::randn(&[b, cap, d], 1.0, 6, dt, &dev).unwrap();
        let got = attention_cached(&q, &kv, len, dv, 0.5, None).unwrap();
        let v = narrow(&kv, 2, 0, dv).unwrap();
        let (want, _) = attention(
            &q.reshape(&[b, 1, s, d]).unwrap(),
            &kv.reshape(&[b, 1, cap, d]).unwrap(),
            &v.reshape(&[b, 1, len, dv]).unwrap(),
            0.5,
            &AttnMask::default(),
        )
        .unwrap();
        let err = rel_err(&got.to_vec_f64().unwrap(), &want.to_vec_f64().unwrap());
        assert!(err < if dt == DType::F64 { 1e-12 } else { 1e-2 }, "{dt:?} {err}");
    }
}
