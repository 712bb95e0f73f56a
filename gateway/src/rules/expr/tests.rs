#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::json;

fn run(src: &str, value: &Value) -> Result<Value, EvalError> {
    let input =
        Input { value, key: json!("dev-1"), headers: json!({"unit": "C"}), timestamp_ms: 1_700_000_000_000 };
    Expr::compile(src).unwrap_or_else(|e| panic!("{src}: {e}")).eval(&input)
}

#[test]
fn arithmetic_comparison_and_logic() {
    let v = json!({"temp": 31.5, "hum": 40, "tags": ["a", "b"], "name": "Boiler"});
    assert_eq!(run("value.temp > 30 && has(value.hum)", &v).unwrap(), json!(true));
    assert_eq!(run("value.temp > 30 && has(value.nope)", &v).unwrap(), json!(false));
    assert_eq!(run("value.hum * 2 + 1", &v).unwrap(), json!(81));
    assert_eq!(run("(value.temp - 1.5) / 10", &v).unwrap(), json!(3));
    assert_eq!(run("-value.hum % 7", &v).unwrap(), json!(-5));
    assert_eq!(run("1 + 2 * 3 == 7", &v).unwrap(), json!(true));
    assert_eq!(run("!(1 < 2) || 2 >= 2", &v).unwrap(), json!(true));
    assert_eq!(run("value.temp > 40 ? 'hot' : 'ok'", &v).unwrap(), json!("ok"));
    assert_eq!(
        run("'b' in value.tags && 'temp' in value && 'oil' in lower(value.name)", &v).unwrap(),
        json!(true)
    );
    assert_eq!(run("value.tags[-1] + value.tags[0]", &v).unwrap(), json!("ba"));
    assert_eq!(run("value[\"name\"] == 'Boiler'", &v).unwrap(), json!(true));
    assert_eq!(run("1 == 1.0 && null == null && [1, 'x'] == [1, 'x']", &v).unwrap(), json!(true));
    assert_eq!(run("1.5e3", &v).unwrap(), json!(1500));
}

#[test]
fn record_fields_and_functions() {
    let v = json!({"t": -2.6, "s": " 12.5 "});
    assert_eq!(run("key", &v).unwrap(), json!("dev-1"));
    assert_eq!(run("headers.unit", &v).unwrap(), json!("C"));
    assert_eq!(run("timestamp / 1000", &v).unwrap(), json!(1_700_000_000));
    assert_eq!(run("abs(value.t)", &v).unwrap(), json!(2.6));
    assert_eq!(
        run("[round(value.t), floor(value.t), ceil(value.t), int(value.t)]", &v).unwrap(),
        json!([-3, -3, -2, -2])
    );
    assert_eq!(run("min(3, value.t, 1) + max(1, 2)", &v).unwrap(), json!(-0.6000000000000001));
    assert_eq!(run("number(value.s) + len('héllo')", &v).unwrap(), json!(17.5));
    assert_eq!(run("string(value.t) + upper(key)", &v).unwrap(), json!("-2.6DEV-1"));
    assert_eq!(
        run("starts_with(key, 'dev') && ends_with(key, '-1') && contains(key, 'v-')", &v).unwrap(),
        json!(true)
    );
}

#[test]
fn short_circuit_skips_the_failing_side() {
    let v = json!({"a": 1});
    assert_eq!(run("has(value.b) && value.b > 1", &v).unwrap(), json!(false));
    assert_eq!(run("!has(value.b) || value.b > 1", &v).unwrap(), json!(true));
    assert_eq!(run("has(value.b) ? value.b : 0", &v).unwrap(), json!(0));
}

#[test]
fn evaluation_errors_name_the_part_and_column() {
    let v = json!({"temp": "warm", "n": 0, "o": {"x": 1}});
    let e = run("value.temp > 30", &v).unwrap_err();
    assert_eq!(e.column, 1);
    assert!(e.to_string().contains("cannot order a string and a number"), "{e}");
    let e = run("1 + value.hum", &v).unwrap_err();
    assert_eq!((e.column, e.text.as_str()), (5, "value.hum"));
    assert!(e.message.contains("missing"), "{e}");
    let e = run("value.temp.x", &v).unwrap_err();
    assert!(e.message.contains("cannot take a field of a string"), "{e}");
    assert!(run("10 / value.n", &v).unwrap_err().message.contains("division by zero"));
    assert!(run("value.o && true", &v).unwrap_err().message.contains("needs true or false, got an object"));
    assert!(run("abs('x')", &v).unwrap_err().message.contains("needs a number, got a string"));
    let e = Expr::compile("value.n + 1").unwrap().eval_bool(&Input {
        value: &v,
        key: Value::Null,
        headers: json!({}),
        timestamp_ms: 0,
    });
    assert!(e.unwrap_err().to_string().contains("gave a number, not true or false"));
}

#[test]
fn compile_errors_name_the_column() {
    let cases = [
        ("value.temp > 30 &&", 19, "expected a value"),
        ("value.temp = 30", 12, "compare with =="),
        ("hass(value.temp)", 1, "unknown function \"hass\""),
        ("value.temp > 30 && tmp < 3", 20, "unknown name \"tmp\""),
        ("abs(1, 2)", 1, "takes 1 argument"),
        ("has(1)", 1, "has() takes a field"),
        ("(1 + 2", 7, "expected \")\""),
        ("1 < 2 < 3", 7, "do not chain"),
        ("'open", 1, "not closed"),
        ("value. temp x", 13, "expected an operator"),
        ("", 1, "is empty"),
        ("value.a # b", 9, "unexpected character '#'"),
    ];
    for (src, column, msg) in cases {
        let e = Expr::compile(src).unwrap_err();
        assert_eq!(e.column, column, "{src}: {e}");
        assert!(e.message.contains(msg), "{src}: {e}");
    }
}

#[test]
fn nesting_and_length_are_bounded() {
    let deep = format!("{}1{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    assert!(Expr::compile(&deep).unwrap_err().message.contains("nested deeper"));
    let ok = format!("{}1{}", "(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1));
    assert!(Expr::compile(&ok).is_ok());
    let nots = "!".repeat(MAX_DEPTH + 1) + "true";
    assert!(Expr::compile(&nots).is_err());
    let chain = vec!["1"; MAX_TREE_DEPTH + 2].join("+");
    assert!(Expr::compile(&chain).unwrap_err().message.contains("operators deep"));
    let long = "1+".repeat(MAX_LEN) + "1";
    assert!(Expr::compile(&long).unwrap_err().message.contains("longer than"));
}

#[test]
fn split_call_finds_aggregates() {
    assert_eq!(Expr::split_call(" avg(value.temp) "), Some(("avg", "value.temp")));
    assert_eq!(Expr::split_call("count()"), Some(("count", "")));
    assert_eq!(Expr::split_call("value.temp"), None);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary text never panics the compiler, and whatever compiles
        /// evaluates (to a value or an error) without panicking.
        #[test]
        fn any_text_compiles_or_fails_cleanly(src in "[ -~]{0,80}") {
            if let Ok(e) = Expr::compile(&src) {
                let v = json!({"a": 1, "b": [1, 2], "s": "x"});
                let _ = e.eval(&Input { value: &v, key: Value::Null, headers: json!({}), timestamp_ms: 0 });
            }
        }

        /// Token soup of the language's own pieces.
        #[test]
        fn token_soup(parts in proptest::collection::vec(prop::sample::select(vec![
            "value", ".a", ".b", "[0]", "(", ")", "+", "-", "*", "/", "%", "&&", "||", "!", "==", "<",
            "?", ":", "1", "'s'", "has(", "abs(", "min(", ",", "in", "[", "]", "true", "null",
        ]), 0..40)) {
            let src = parts.join(" ");
            if let Ok(e) = Expr::compile(&src) {
                let v = json!({"a": 1, "b": [1, 2]});
                let _ = e.eval(&Input { value: &v, key: json!("k"), headers: json!({}), timestamp_ms: 0 });
            }
        }
    }
}
