//! The decimal number at the start of a size or duration (`"1.5"` in
//! `"1.5GiB"`), kept exact so `"0.1s"` is exactly 100 ms and not a float
//! rounding of it.

/// Decimal places beyond this are refused; it keeps `frac * multiplier`
/// inside `u128` for every unit we have (the largest is a day in ns).
const MAX_FRACTION_DIGITS: u32 = 18;

/// A non-negative decimal `int.frac` with `frac_digits` places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decimal {
    int: u128,
    frac: u128,
    frac_digits: u32,
}

impl Decimal {
    /// Splits `s` into the leading number and the rest. The number must
    /// start with a digit; a `.` must be followed by a digit.
    pub(crate) fn split(s: &str) -> Result<(Decimal, &str), String> {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return Err("expected a number at the start".to_owned());
        }
        let int = digits_value(&s[..int_len])?;
        let rest = &s[int_len..];
        let Some(after_dot) = rest.strip_prefix('.') else {
            let whole = Decimal { int, frac: 0, frac_digits: 0 };
            return Ok((whole, rest));
        };
        let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        if frac_len == 0 {
            return Err("expected a digit after the decimal point".to_owned());
        }
        let frac_text = after_dot[..frac_len].trim_end_matches('0');
        let frac_digits = u32::try_from(frac_text.len()).unwrap_or(u32::MAX);
        if frac_digits > MAX_FRACTION_DIGITS {
            return Err(format!("too many decimal places (at most {MAX_FRACTION_DIGITS})"));
        }
        let frac = if frac_text.is_empty() { 0 } else { digits_value(frac_text)? };
        let number = Decimal { int, frac, frac_digits };
        Ok((number, &after_dot[frac_len..]))
    }

    /// `self * mult` if it is a whole number and fits in `u128`; `None`
    /// when it has a fractional part. Overflow saturates to `u128::MAX` so
    /// callers report it as "too large" through their own range check.
    pub(crate) fn times(self, mult: u128) -> Option<u128> {
        let whole = self.int.saturating_mul(mult);
        if self.frac == 0 {
            return Some(whole);
        }
        let scale = 10u128.pow(self.frac_digits);
        // frac < 10^18 and every unit multiplier is below 2^51, so the
        // product stays far below u128::MAX; saturating only for safety.
        let scaled = self.frac.saturating_mul(mult);
        if scaled % scale != 0 {
            return None;
        }
        Some(whole.saturating_add(scaled / scale))
    }
}

fn digits_value(digits: &str) -> Result<u128, String> {
    digits.bytes().try_fold(0u128, |acc, b| {
        acc.checked_mul(10)
            .and_then(|acc| acc.checked_add(u128::from(b - b'0')))
            .ok_or_else(|| "number too large".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_scales_exactly() {
        let (n, rest) = Decimal::split("1.5GiB").expect("valid");
        assert_eq!(rest, "GiB");
        assert_eq!(n.times(1 << 30), Some(3 << 29));
        let (n, _) = Decimal::split("0.1s").expect("valid");
        assert_eq!(n.times(1_000_000_000), Some(100_000_000));
        let (n, _) = Decimal::split("2.50").expect("valid");
        assert_eq!(n.times(2), Some(5));
        let (n, _) = Decimal::split("0.3").expect("valid");
        assert_eq!(n.times(1), None);
    }

    #[test]
    fn refuses_malformed_numbers() {
        assert!(Decimal::split("x1").is_err());
        assert!(Decimal::split("1.").is_err());
        assert!(Decimal::split("1.0000000000000000001").is_err());
        assert!(Decimal::split(&"9".repeat(40)).is_err());
    }
}
