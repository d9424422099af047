//! Exact parsing of Kalshi's fixed-point decimal strings into the crate's integer units, with no floating point
//! anywhere: a FixedPointDollars string ("0.2900") becomes micro-dollars, a FixedPointCount string ("12.34")
//! centi-contracts, and the legacy integer cents and contracts are scaled with checked arithmetic.
//!
//! The grammar is `-?[0-9]+(\.[0-9]+)?`, ASCII only. Decisions:
//! - `.5` and `5.` are refused: Kalshi always writes digits on both sides of the point, and a missing side more
//!   likely means a cut or corrupted value than a shorthand.
//! - Leading zeros are accepted ("00.50" is 0.5): the value is unambiguous.
//! - Zeros past the unit's precision are accepted ("0.5600000"); any other digit there is refused, never rounded.
//! - Only `-` is a sign (deltas are negative); `+`, whitespace, exponents, separators, "NaN" and "inf" are refused.
//! - Ranges are the callers' business (a price must be below 1 USD, a count positive): here the only limit is
//!   that the scaled value fits an i64 ("-0" is 0).

/// Digits after the point in a FixedPointDollars string: micro-dollars.
const DOLLAR_DECIMALS: u32 = 6;
/// Digits after the point in a FixedPointCount string: centi-contracts.
const COUNT_DECIMALS: u32 = 2;
/// Input shown in an error, at most this many characters.
const SHOWN_CHARS: usize = 40;

/// Why a decimal could not be converted exactly. Shows the (possibly shortened) input quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Not of the form `-?digits(.digits)?`.
    #[error("{input:?} is not a plain decimal number: {reason}")]
    Syntax {
        /// The input, shortened to 40 characters.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// Non-zero digits beyond the unit's precision: the value cannot be represented without rounding.
    #[error("{input:?} has more than {decimals} decimals")]
    TooPrecise {
        /// The input, shortened to 40 characters.
        input: String,
        /// The precision of the unit.
        decimals: u32,
    },
    /// The scaled value does not fit an i64.
    #[error("{input:?} is out of range")]
    OutOfRange {
        /// The input, shortened to 40 characters.
        input: String,
    },
}

/// A FixedPointDollars string (up to 6 decimals) in micro-dollars: "0.2900" is 290000.
pub fn dollars_to_micros(s: &str) -> Result<i64, DecimalError> {
    parse_fixed(s, DOLLAR_DECIMALS)
}

/// A FixedPointCount string (up to 2 decimals) in centi-contracts: "12.34" is 1234, "-54.00" is -5400.
pub fn count_to_centi(s: &str) -> Result<i64, DecimalError> {
    parse_fixed(s, COUNT_DECIMALS)
}

/// Legacy integer cents in micro-dollars (x 10_000).
pub fn cents_to_micros(cents: i64) -> Result<i64, DecimalError> {
    cents.checked_mul(10_000).ok_or_else(|| DecimalError::OutOfRange { input: format!("{cents} cents") })
}

/// Legacy integer contracts in centi-contracts (x 100).
pub fn contracts_to_centi(n: i64) -> Result<i64, DecimalError> {
    n.checked_mul(100).ok_or_else(|| DecimalError::OutOfRange { input: format!("{n} contracts") })
}

/// Checks that `s` is a plain decimal of any precision, e.g. a strike such as "99999.99", and returns it as is.
pub fn check_plain(s: &str) -> Result<&str, DecimalError> {
    split(s)?;
    Ok(s)
}

/// The sign, integer digits and fraction digits of a plain decimal.
fn split(s: &str) -> Result<(bool, &str, &str), DecimalError> {
    let syntax = |reason: &str| DecimalError::Syntax { input: shown(s), reason: reason.to_owned() };
    if s.is_empty() {
        return Err(syntax("empty"));
    }
    if let Some(c) = s.chars().find(|c| !matches!(c, '0'..='9' | '.' | '-')) {
        return Err(syntax(&format!("unexpected character {c:?}")));
    }
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if unsigned.contains('-') {
        return Err(syntax("'-' is allowed only as the first character"));
    }
    let (int, frac) = match unsigned.split_once('.') {
        Some((_, frac)) if frac.contains('.') => return Err(syntax("more than one '.'")),
        Some((int, frac)) => (int, Some(frac)),
        None => (unsigned, None),
    };
    if int.is_empty() {
        return Err(syntax(if frac.is_some() { "no digits before '.'" } else { "no digits" }));
    }
    match frac {
        Some("") => Err(syntax("no digits after '.'")),
        Some(frac) => Ok((negative, int, frac)),
        None => Ok((negative, int, "")),
    }
}

/// Parses a plain decimal into an integer of `decimals` implied decimal places.
fn parse_fixed(s: &str, decimals: u32) -> Result<i64, DecimalError> {
    let (negative, int, frac) = split(s)?;
    let out_of_range = || DecimalError::OutOfRange { input: shown(s) };
    // the magnitude of i64::MIN, the largest allowed; checked digit by digit so i128 cannot overflow
    let limit = i128::from(i64::MAX) + 1;
    let mut magnitude: i128 = 0;
    for digit in int.bytes() {
        magnitude = magnitude * 10 + i128::from(digit - b'0');
        if magnitude > limit {
            return Err(out_of_range());
        }
    }
    let (kept, rest) = frac.split_at(frac.len().min(decimals as usize));
    if rest.bytes().any(|d| d != b'0') {
        return Err(DecimalError::TooPrecise { input: shown(s), decimals });
    }
    let mut fraction: i128 = 0;
    for digit in kept.bytes() {
        fraction = fraction * 10 + i128::from(digit - b'0');
    }
    let missing = decimals - kept.len() as u32;
    magnitude = magnitude * 10_i128.pow(decimals) + fraction * 10_i128.pow(missing);
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| out_of_range())
}

/// The input as shown in an error: at most [`SHOWN_CHARS`] characters.
fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a table row expects: the value, or the start of the error's text.
    #[derive(Debug)]
    enum Want {
        Value(i64),
        Error(&'static str),
    }
    use Want::{Error as E, Value as V};

    /// Error prefixes, so that each row also pins which check refused the input.
    const SYNTAX: &str = "is not a plain decimal";
    const PRECISE: &str = "has more than";
    const RANGE: &str = "is out of range";

    fn check(parse: fn(&str) -> Result<i64, DecimalError>, table: &[(&str, Want)]) {
        for (input, want) in table {
            match (parse(input), want) {
                (Ok(got), V(value)) => assert_eq!(got, *value, "{input:?}"),
                (Err(error), E(text)) => {
                    let shown = error.to_string();
                    assert!(shown.contains(text), "{input:?}: {shown}");
                    let quoted = format!("{:?}", super::shown(input));
                    assert!(shown.starts_with(&quoted), "input quoted first: {shown}");
                }
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn dollars_table() {
        check(
            dollars_to_micros,
            &[
                ("0.2900", V(290_000)),
                ("0.29", V(290_000)),
                ("0.000001", V(1)),
                ("1", V(1_000_000)),
                ("0", V(0)),
                ("-0", V(0)),
                ("-0.000", V(0)),
                ("0.5600000", V(560_000)),
                ("0.560000000000000000000000000000", V(560_000)),
                ("0.5600", V(560_000)),
                ("00.50", V(500_000)),
                ("-0.01", V(-10_000)),
                ("0.999999", V(999_999)),
                ("0.960", V(960_000)),
                ("1.0000", V(1_000_000)),
                ("99999.99", V(99_999_990_000)),
                ("9223372036854.775807", V(i64::MAX)),
                ("-9223372036854.775808", V(i64::MIN)),
                ("0.0000001", E(PRECISE)),
                ("0.29000001", E(PRECISE)),
                ("0.9999995", E(PRECISE)),
                ("9223372036854.775808", E(RANGE)),
                ("-9223372036854.775809", E(RANGE)),
                ("99999999999999999999999999999999999999999999", E(RANGE)),
                ("", E(SYNTAX)),
                ("1.", E(SYNTAX)),
                (".5", E(SYNTAX)),
                (".", E(SYNTAX)),
                ("-", E(SYNTAX)),
                ("-.5", E(SYNTAX)),
                ("--1", E(SYNTAX)),
                ("1-", E(SYNTAX)),
                ("1..2", E(SYNTAX)),
                ("1.2.3", E(SYNTAX)),
                (" 1", E(SYNTAX)),
                ("1 ", E(SYNTAX)),
                ("0. 5", E(SYNTAX)),
                ("+1", E(SYNTAX)),
                ("1e-2", E(SYNTAX)),
                ("1E2", E(SYNTAX)),
                ("NaN", E(SYNTAX)),
                ("inf", E(SYNTAX)),
                ("-inf", E(SYNTAX)),
                ("1,000.00", E(SYNTAX)),
                ("0,5", E(SYNTAX)),
                ("0x10", E(SYNTAX)),
                ("١", E(SYNTAX)),
                ("٠.٥", E(SYNTAX)),
                ("$0.29", E(SYNTAX)),
                ("0.29\n", E(SYNTAX)),
            ],
        );
    }

    #[test]
    fn counts_table() {
        check(
            count_to_centi,
            &[
                ("12.34", V(1234)),
                ("10", V(1000)),
                ("10.0", V(1000)),
                ("10.00", V(1000)),
                ("12.340", V(1234)),
                ("12.3400000", V(1234)),
                ("-54.00", V(-5400)),
                ("-54", V(-5400)),
                ("0.01", V(1)),
                ("-0.01", V(-1)),
                ("00.50", V(50)),
                ("0", V(0)),
                ("136.00", V(13_600)),
                ("2.5", V(250)),
                ("92233720368547758.07", V(i64::MAX)),
                ("-92233720368547758.08", V(i64::MIN)),
                ("12.345", E(PRECISE)),
                ("0.001", E(PRECISE)),
                ("0.999999", E(PRECISE)),
                ("0.9999995", E(PRECISE)),
                ("9223372036854.775808", E(PRECISE)),
                ("92233720368547758.08", E(RANGE)),
                ("9223372036854.775807", E(PRECISE)),
                ("", E(SYNTAX)),
                ("1.", E(SYNTAX)),
                (".5", E(SYNTAX)),
                (".", E(SYNTAX)),
                ("-", E(SYNTAX)),
                ("--1", E(SYNTAX)),
                ("1..2", E(SYNTAX)),
                (" 1", E(SYNTAX)),
                ("1 ", E(SYNTAX)),
                ("+10", E(SYNTAX)),
                ("1e2", E(SYNTAX)),
                ("NaN", E(SYNTAX)),
                ("inf", E(SYNTAX)),
                ("1,000", E(SYNTAX)),
                ("0x10", E(SYNTAX)),
                ("١", E(SYNTAX)),
                ("10.00 ", E(SYNTAX)),
            ],
        );
    }

    #[test]
    fn legacy_integers_scale_with_checks() {
        assert_eq!(cents_to_micros(29), Ok(290_000));
        assert_eq!(cents_to_micros(-54), Ok(-540_000));
        assert_eq!(contracts_to_centi(136), Ok(13_600));
        assert_eq!(contracts_to_centi(-54), Ok(-5400));
        assert_eq!(
            cents_to_micros(i64::MAX / 10_000 + 1).unwrap_err().to_string(),
            "\"922337203685478 cents\" is out of range"
        );
        assert!(contracts_to_centi(i64::MIN).is_err());
    }

    #[test]
    fn errors_name_the_input_and_the_reason() {
        let shown = |s: &str| dollars_to_micros(s).unwrap_err().to_string();
        assert_eq!(shown("0.29000001"), "\"0.29000001\" has more than 6 decimals");
        assert_eq!(count_to_centi("12.345").unwrap_err().to_string(), "\"12.345\" has more than 2 decimals");
        assert_eq!(shown("1e-2"), "\"1e-2\" is not a plain decimal number: unexpected character 'e'");
        assert_eq!(shown("1..2"), "\"1..2\" is not a plain decimal number: more than one '.'");
        assert_eq!(shown(""), "\"\" is not a plain decimal number: empty");
        let long = "1".repeat(100);
        assert!(shown(&long).len() < 80, "{}", shown(&long));
    }

    #[test]
    fn plain_decimals_of_any_precision() {
        assert_eq!(check_plain("99999.99"), Ok("99999.99"));
        assert_eq!(check_plain("-0.000000001"), Ok("-0.000000001"));
        assert!(check_plain("1e5").is_err());
        assert!(check_plain("4487.").is_err());
    }
}
