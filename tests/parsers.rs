//! Property tests of the parsers of bytes that come from outside: Kalshi's JSON lines (`import`) and the exact
//! decimal parsers. Whatever the input, they answer (never panic) and a refusal names what is wrong: the field
//! of a line, the input of a decimal. (The token decoder has its own, in src/token.rs.)

use kalshi_replay::{decimal, import::kalshi::parse_line};
use proptest::prelude::*;
use serde_json::{Map, Value};

const WS_LINES: &str = include_str!("fixtures/kalshi/ws_current.jsonl");

/// Arbitrary JSON: scalars of every kind (huge and negative numbers, decimals, odd strings) nested a little.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "-?[0-9]{0,30}(\\.[0-9]{0,30})?(e-?[0-9]{1,4})?".prop_filter_map("a JSON number", |s| s.parse().ok()),
        ".{0,40}".prop_map(Value::String),
        "-?[0-9]{0,25}(\\.[0-9]{0,12})?".prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{0,15}Z?".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Fixture lines, each with one field of its object or of its `msg` set to an arbitrary value (or removed).
fn mutated_line() -> impl Strategy<Value = String> {
    let lines: Vec<&'static str> = WS_LINES.lines().filter(|l| !l.trim().is_empty()).collect();
    (proptest::sample::select(lines), any::<prop::sample::Index>(), any::<bool>(), proptest::option::of(json()))
        .prop_map(|(line, at, in_msg, value)| {
            let mut line: Value = serde_json::from_str(line).expect("fixture JSON");
            let object = match line.get_mut("msg").and_then(Value::as_object_mut) {
                Some(msg) if in_msg => msg,
                _ => line.as_object_mut().expect("an object"),
            };
            let keys: Vec<String> = object.keys().cloned().collect();
            let key = keys[at.index(keys.len())].clone();
            match value {
                Some(value) => object.insert(key, value),
                None => object.remove(&key),
            };
            line.to_string()
        })
}

fn assert_refused_with_a_field(line: &str) -> Result<(), TestCaseError> {
    if let Err(e) = parse_line(line) {
        prop_assert!(!e.field.is_empty() && !e.reason.is_empty(), "{:?} for {}", e, line);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_text_never_panics_the_line_parser(line in ".{0,300}") {
        assert_refused_with_a_field(&line)?;
    }

    #[test]
    fn arbitrary_json_never_panics_the_line_parser(value in json()) {
        assert_refused_with_a_field(&value.to_string())?;
    }

    #[test]
    fn lines_with_a_field_of_any_value_are_read_or_refused_naming_a_field(line in mutated_line()) {
        assert_refused_with_a_field(&line)?;
    }

    #[test]
    fn lines_cut_or_with_a_byte_changed_never_panic(
        line in proptest::sample::select(WS_LINES.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>()),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let i = at.index(line.len());
        let mut bytes = line.as_bytes().to_vec();
        bytes[i] = byte;
        assert_refused_with_a_field(&String::from_utf8_lossy(&bytes))?;
        let cut = (0..=i).rev().find(|&j| line.is_char_boundary(j)).unwrap_or(0);
        assert_refused_with_a_field(&line[..cut])?;
    }

    /// Any text: a value, or a refusal that shows the input it refused.
    #[test]
    fn arbitrary_text_never_panics_the_decimal_parsers(s in ".{0,60}|-?[0-9]{0,40}(\\.[0-9]{0,40})?") {
        for parsed in [decimal::dollars_to_micros(&s), decimal::count_to_centi(&s), decimal::check_plain(&s).map(|_| 0)] {
            if let Err(e) = parsed {
                let shown: String = s.chars().take(20).collect();
                prop_assert!(e.to_string().contains(&format!("{shown:?}").trim_end_matches('"').to_owned()), "{} for {:?}", e, s);
            }
        }
    }

    /// Every plain decimal within range parses exactly: the integer of its digits, scaled.
    #[test]
    fn plain_decimals_parse_exactly(negative in any::<bool>(), int in 0i64..1_000_000_000, frac in 0u32..1_000_000, width in 1usize..=6) {
        let frac = frac % 10u32.pow(width as u32);
        let text = format!("{}{int}.{frac:0width$}", if negative { "-" } else { "" });
        let micros = (int * 1_000_000 + i64::from(frac) * 10i64.pow(6 - width as u32)) * if negative { -1 } else { 1 };
        prop_assert_eq!(decimal::dollars_to_micros(&text), Ok(micros));
    }

    #[test]
    fn legacy_integers_scale_or_are_out_of_range(n in any::<i64>()) {
        prop_assert_eq!(decimal::cents_to_micros(n).ok(), n.checked_mul(10_000));
        prop_assert_eq!(decimal::contracts_to_centi(n).ok(), n.checked_mul(100));
    }
}
