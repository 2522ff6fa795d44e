//! Post-processing of the `sm_90a` machine code (CUBIN) NVRTC makes of the own FP8 kernel: the
//! scheduling hints of the promotion's FFMA runs.
//!
//! ptxas emits a K block's promotion as one long run of `FFMA acc, scratch, scale, acc`, every
//! other one flagged to keep its scale operand in the operand-reuse cache, and each flagged one
//! marked "don't yield" (the reuse cache only survives if the same warp issues the next
//! instruction). While one math warpgroup promotes, its warps so hold their schedulers; the
//! other warpgroup's warps on the same schedulers wait to issue their `wgmma` batch, whose four
//! warps must all arrive. [`interleave_ffma`] clears the reuse flags and the no-yield bit of
//! (a leading fraction of) each such run, so the scheduler may switch warps after any FFMA.
//! Both changes are hints: the results are the same bit for bit; only the issue order changes.
//!
//! An sm_90 instruction is 16 bytes, two little-endian 64-bit words: the opcode and operands,
//! then a word whose top 23 bits are the control code (stall cycles in bits 41–44, the no-yield
//! bit 45, barrier fields in 46–57, the operand-reuse flags in 58–61).

/// Low 12 bits of `FFMA Rd, Ra, Rb, Rc` (all operands registers).
const FFMA_RRR: u64 = 0x223;
/// Operand-reuse flags of the control word.
const REUSE: u64 = 0xF << 58;
/// The control bit that keeps the scheduler on this warp for the next instruction.
const NO_YIELD: u64 = 1 << 45;
/// Shortest FFMA run treated as a promotion (the smallest tile has 64 per K block).
pub(crate) const MIN_RUN: usize = 32;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The code sections of a 64-bit little-endian ELF: (kernel name, file offset, size) for every
/// section named `.text.<kernel>`.
fn text_sections(elf: &[u8]) -> Result<Vec<(String, usize, usize)>, String> {
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let bad = || "truncated ELF header or section table".to_string();
    let shoff = u64_at(elf, 0x28).ok_or_else(bad)? as usize;
    let shentsize = u16_at(elf, 0x3A).ok_or_else(bad)? as usize;
    let shnum = u16_at(elf, 0x3C).ok_or_else(bad)? as usize;
    let shstrndx = u16_at(elf, 0x3E).ok_or_else(bad)? as usize;
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(elf, h)?, u64_at(elf, h + 0x18)? as usize, u64_at(elf, h + 0x20)? as usize))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or_else(bad)?;
    let names = elf.get(stroff..stroff.checked_add(strsize).ok_or_else(bad)?).ok_or_else(bad)?;
    let mut out = Vec::new();
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or_else(bad)?;
        let name = names.get(name as usize..).ok_or_else(bad)?;
        let name = &name[..name.iter().position(|&c| c == 0).ok_or_else(bad)?];
        let Some(kernel) = name.strip_prefix(b".text.") else { continue };
        if off.checked_add(size).is_none_or(|end| end > elf.len()) || size % 16 != 0 {
            return Err(format!("section {} out of the file or not whole instructions", String::from_utf8_lossy(name)));
        }
        out.push((String::from_utf8_lossy(kernel).into_owned(), off, size));
    }
    Ok(out)
}

/// For each kernel of `elf` (a CUBIN) for which `percent` returns `Some(p)`: in every run of at
/// least [`MIN_RUN`] consecutive `FFMA` instructions, the first `p` % of the run (rounded up)
/// lose their operand-reuse flags and may yield. Returns the number of instructions changed per
/// selected kernel; an error for a file that is not an ELF or a selected kernel without such a
/// run (the code no longer looks as expected).
pub(crate) fn interleave_ffma(
    elf: &mut [u8],
    percent: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<(String, usize)>, String> {
    let mut changed = Vec::new();
    for (kernel, off, size) in text_sections(elf)? {
        let Some(p) = percent(&kernel) else { continue };
        let code = &mut elf[off..off + size];
        let n = size / 16;
        let is_ffma = |code: &[u8], i: usize| u64_at(code, 16 * i).is_some_and(|lo| lo & 0xFFF == FFMA_RRR);
        let (mut i, mut count, mut runs) = (0, 0, 0);
        while i < n {
            if !is_ffma(code, i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && is_ffma(code, i) {
                i += 1;
            }
            if i - start < MIN_RUN {
                continue;
            }
            runs += 1;
            let take = ((i - start) * p as usize).div_ceil(100);
            for j in start..start + take {
                let o = 16 * j + 8;
                let hi = u64_at(code, o).expect("inside the section");
                if hi & REUSE != 0 {
                    code[o..o + 8].copy_from_slice(&(hi & !REUSE & !NO_YIELD).to_le_bytes());
                    count += 1;
                }
            }
        }
        if runs == 0 {
            return Err(format!("{kernel}: no run of {MIN_RUN} FFMA instructions"));
        }
        changed.push((kernel, count));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `FFMA R197, R24, R2, R197` and `FFMA R198, R25, R2.reuse, R198` as ptxas 13.0 emits them.
    const FFMA: [u64; 2] = [0x0000000218c57223, 0x000fc200000000c5];
    const FFMA_REUSE: [u64; 2] = [0x0000000219c67223, 0x080fe200000000c6];
    /// `QGMMA.64x192x32.F32.E4M3.E4M3 R24, gdesc[UR20], RZ, !UPT`.
    const OTHER: [u64; 2] = [0x02e00000141879f3, 0x000fe2000c7008ff];

    /// A minimal CUBIN-shaped ELF: a null section, the section-name table, and one code section
    /// `.text.<name>` per kernel.
    fn elf(kernels: &[(&str, Vec<[u64; 2]>)]) -> Vec<u8> {
        let mut names = vec![0u8];
        names.extend_from_slice(b".shstrtab\0");
        let mut body = Vec::new();
        let mut sections = vec![(0u32, 0usize, 0usize), (1, 0, 0)];
        for (name, code) in kernels {
            let n = names.len() as u32;
            names.extend_from_slice(format!(".text.{name}\0").as_bytes());
            let off = 64 + body.len();
            for w in code.iter().flatten() {
                body.extend_from_slice(&w.to_le_bytes());
            }
            sections.push((n, off, 16 * code.len()));
        }
        sections[1] = (1, 64 + body.len(), names.len());
        body.extend_from_slice(&names);
        let shoff = 64 + body.len();
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        f[0x3C..0x3E].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        f[0x3E..0x40].copy_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&body);
        for (name, off, size) in sections {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        }
        f
    }

    fn words(elf: &[u8], kernel: &str) -> Vec<[u64; 2]> {
        let (_, off, size) = text_sections(elf).unwrap().into_iter().find(|s| s.0 == kernel).unwrap();
        (0..size / 16).map(|i| [u64_at(elf, off + 16 * i).unwrap(), u64_at(elf, off + 16 * i + 8).unwrap()]).collect()
    }

    /// A promotion-like run of `n` FFMAs, reuse-flagged ones alternating with plain ones.
    fn run(n: usize) -> Vec<[u64; 2]> {
        (0..n).map(|i| if i % 2 == 1 { FFMA_REUSE } else { FFMA }).collect()
    }

    #[test]
    fn flags_cleared_in_long_runs_of_selected_kernels_only() {
        let mut code = vec![OTHER];
        code.extend(run(64));
        code.push(OTHER);
        code.extend(run(MIN_RUN - 1)); // too short: untouched
        let mut f = elf(&[("a_y", code.clone()), ("b", code.clone())]);
        let changed = interleave_ffma(&mut f, |k| k.ends_with("_y").then_some(100)).unwrap();
        assert_eq!(changed, vec![("a_y".to_string(), 32)]);
        let a = words(&f, "a_y");
        let cleared = [FFMA_REUSE[0], FFMA_REUSE[1] & !REUSE & !NO_YIELD];
        assert_eq!(cleared[1], 0x000fc200000000c6, "reuse and no-yield bits of the sample");
        for (i, (w, orig)) in a.iter().zip(&code).enumerate() {
            let expect = if (1..65).contains(&i) && *orig == FFMA_REUSE { cleared } else { *orig };
            assert_eq!(*w, expect, "instruction {i}");
        }
        assert_eq!(words(&f, "b"), code, "unselected kernel unchanged");
    }

    #[test]
    fn leading_fraction_of_each_run() {
        let mut code = run(64);
        code.push(OTHER);
        code.extend(run(40));
        let mut f = elf(&[("k", code.clone())]);
        let changed = interleave_ffma(&mut f, |_| Some(50)).unwrap();
        // First 32 of 64 (16 reuse-flagged), first 20 of 40 (10).
        assert_eq!(changed, vec![("k".to_string(), 26)]);
        let w = words(&f, "k");
        for (i, (w, orig)) in w.iter().zip(&code).enumerate() {
            let lead = i < 32 || (65..85).contains(&i);
            assert_eq!(w[0], orig[0]);
            assert_eq!(w[1] & REUSE == 0, lead || *orig != FFMA_REUSE, "instruction {i}");
        }
    }

    #[test]
    fn rejects_other_files_and_kernels_without_a_promotion() {
        assert!(interleave_ffma(&mut [0u8; 64], |_| Some(100)).is_err());
        let mut f = elf(&[("k", run(8))]);
        let e = interleave_ffma(&mut f, |_| Some(100)).unwrap_err();
        assert!(e.contains("no run"), "{e}");
        assert_eq!(interleave_ffma(&mut f, |_| None).unwrap(), vec![]);
    }
}
