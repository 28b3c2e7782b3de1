//! Page arithmetic. Engines use power-of-two page sizes (1, 16, 32), for which rounding and
//! residues are a shift and a mask; the hot loop would otherwise divide several times an
//! iteration.

#[derive(Clone, Copy, Debug)]
pub struct PageSize {
    size: i64,
    /// log2(size) when size is a power of two.
    shift: Option<u32>,
}

impl PageSize {
    pub fn new(size: i64) -> PageSize {
        debug_assert!(size >= 1);
        let shift = (size as u64)
            .is_power_of_two()
            .then(|| size.trailing_zeros());
        PageSize { size, shift }
    }

    #[inline]
    pub fn size(self) -> i64 {
        self.size
    }

    /// Pages that hold `tokens` tokens (rounded up).
    #[inline]
    pub fn pages(self, tokens: i64) -> i64 {
        match self.shift {
            Some(shift) => (tokens + self.size - 1) >> shift,
            None => (tokens + self.size - 1) / self.size,
        }
    }

    /// `x` modulo the page size, in 0..size, for any sign of `x`.
    #[inline]
    pub fn residue(self, x: i64) -> usize {
        match self.shift {
            Some(_) => (x & (self.size - 1)) as usize,
            None => x.rem_euclid(self.size) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PageSize;

    #[test]
    fn shifts_agree_with_division() {
        for size in [1, 2, 3, 16, 32, 48] {
            let p = PageSize::new(size);
            for x in -100..100 {
                assert_eq!(p.residue(x), x.rem_euclid(size) as usize);
                if x >= 0 {
                    assert_eq!(p.pages(x), (x + size - 1) / size);
                }
            }
        }
    }
}
