//! Evaluation of a [`Node`] tree against one record. Always terminates:
//! the tree is finite and bounded in depth, and there are no loops.

use super::parse::{BinOp, Func, Node, Root, Span};
use super::{EvalError, Input};
use serde_json::{Number, Value};
use std::borrow::Cow;

type Out<'a> = Result<Cow<'a, Value>, EvalError>;

/// A JSON number for `n`: an integer when it is one (so `3` stays `3`, not
/// `3.0`), else a float; non-finite values become null (callers check).
pub(crate) fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        Value::from(n as i64)
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// The JSON type name of `v`, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(super) struct Eval<'a, 'i> {
    pub(super) src: &'a str,
    pub(super) input: &'i Input<'i>,
}

impl<'a, 'i> Eval<'a, 'i> {
    fn err(&self, span: Span, message: String) -> EvalError {
        let text = self.src.get(span.start..span.end).unwrap_or("").to_owned();
        EvalError { column: self.src[..span.start.min(self.src.len())].chars().count() + 1, text, message }
    }

    fn finite(&self, n: f64, span: Span) -> Out<'i> {
        if n.is_finite() {
            Ok(Cow::Owned(number(n)))
        } else {
            Err(self.err(span, "the result is not a finite number".into()))
        }
    }

    pub(super) fn eval(&self, node: &Node) -> Out<'i> {
        match node {
            Node::Lit(v) => Ok(Cow::Owned(v.clone())),
            Node::Root(Root::Value) => Ok(Cow::Borrowed(self.input.value)),
            Node::Root(Root::Key) => Ok(Cow::Borrowed(&self.input.key)),
            Node::Root(Root::Headers) => Ok(Cow::Borrowed(&self.input.headers)),
            Node::Root(Root::Timestamp) => Ok(Cow::Owned(Value::from(self.input.timestamp_ms))),
            Node::Field(..) | Node::Index(..) => match self.path(node)? {
                Some(v) => Ok(v),
                None => Err(self.missing(node)),
            },
            Node::List(items) => {
                let items: Result<Vec<Value>, EvalError> =
                    items.iter().map(|n| self.eval(n).map(Cow::into_owned)).collect();
                Ok(Cow::Owned(Value::Array(items?)))
            }
            Node::Not(inner, span) => Ok(Cow::Owned(Value::Bool(!self.boolean(inner, *span)?))),
            Node::Neg(inner, span) => {
                let n = self.num(inner, *span)?;
                self.finite(-n, *span)
            }
            Node::And(a, b, span) => {
                Ok(Cow::Owned(Value::Bool(self.boolean(a, *span)? && self.boolean(b, *span)?)))
            }
            Node::Or(a, b, span) => {
                Ok(Cow::Owned(Value::Bool(self.boolean(a, *span)? || self.boolean(b, *span)?)))
            }
            Node::Cond(c, a, b, span) => {
                if self.boolean(c, *span)? {
                    self.eval(a)
                } else {
                    self.eval(b)
                }
            }
            Node::Bin(op, a, b, span) => self.binary(*op, a, b, *span),
            Node::Call(func, args, span) => self.call(*func, args, *span),
        }
    }

    /// A field or index path: `None` when a step is missing, an error when
    /// a step is applied to the wrong type.
    fn path(&self, node: &Node) -> Result<Option<Cow<'i, Value>>, EvalError> {
        let (base, step, span) = match node {
            Node::Field(base, name, span) => (base, Step::Name(name), *span),
            Node::Index(base, index, span) => (base, Step::Index(index), *span),
            other => return self.eval(other).map(Some),
        };
        let Some(base) = self.path(base)? else { return Ok(None) };
        let key = match step {
            Step::Name(name) => Value::String(name.clone()),
            Step::Index(index) => self.eval(index)?.into_owned(),
        };
        let pick = |v: &Value| -> Result<Option<Value>, EvalError> {
            match (v, &key) {
                (Value::Object(m), Value::String(k)) => Ok(m.get(k).cloned()),
                (Value::Array(a), Value::Number(n)) => {
                    let i = n.as_f64().unwrap_or(-1.0);
                    let i = if i < 0.0 { a.len() as f64 + i } else { i };
                    Ok(if i >= 0.0 && i.fract() == 0.0 { a.get(i as usize).cloned() } else { None })
                }
                (v, k) => Err(self.err(
                    span,
                    format!(
                        "cannot take {} of {}",
                        if k.is_string() { "a field" } else { "an index" },
                        type_name(v)
                    ),
                )),
            }
        };
        match base {
            // Borrowed from the record: stay borrowed (no copy of the value).
            Cow::Borrowed(v) => match (v, &key) {
                (Value::Object(m), Value::String(k)) => Ok(m.get(k).map(Cow::Borrowed)),
                _ => Ok(pick(v)?.map(Cow::Owned)),
            },
            Cow::Owned(v) => Ok(pick(&v)?.map(Cow::Owned)),
        }
    }

    fn missing(&self, node: &Node) -> EvalError {
        let span = match node {
            Node::Field(_, _, s) | Node::Index(_, _, s) => *s,
            _ => Span { start: 0, end: 0 },
        };
        self.err(span, "is missing (test with has() first, or use a default: has(x) ? x : 0)".into())
    }

    fn boolean(&self, node: &Node, span: Span) -> Result<bool, EvalError> {
        match self.eval(node)?.as_ref() {
            Value::Bool(b) => Ok(*b),
            other => Err(self.err(span, format!("needs true or false, got {}", type_name(other)))),
        }
    }

    fn num(&self, node: &Node, span: Span) -> Result<f64, EvalError> {
        match self.eval(node)?.as_ref() {
            Value::Number(n) => Ok(n.as_f64().unwrap_or(0.0)),
            other => Err(self.err(span, format!("needs a number, got {}", type_name(other)))),
        }
    }

    fn binary(&self, op: BinOp, a: &Node, b: &Node, span: Span) -> Out<'i> {
        let (x, y) = (self.eval(a)?, self.eval(b)?);
        let (x, y) = (x.as_ref(), y.as_ref());
        let bool_out = |b: bool| Ok(Cow::Owned(Value::Bool(b)));
        match op {
            BinOp::Eq => bool_out(equal(x, y)),
            BinOp::Ne => bool_out(!equal(x, y)),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let ord = match (x, y) {
                    (Value::Number(x), Value::Number(y)) => {
                        x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0))
                    }
                    (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                    _ => None,
                };
                let Some(ord) = ord else {
                    return Err(self.err(span, format!("cannot order {} and {}", type_name(x), type_name(y))));
                };
                bool_out(match op {
                    BinOp::Lt => ord.is_lt(),
                    BinOp::Le => ord.is_le(),
                    BinOp::Gt => ord.is_gt(),
                    _ => ord.is_ge(),
                })
            }
            BinOp::In => match y {
                Value::Array(items) => bool_out(items.iter().any(|i| equal(x, i))),
                Value::Object(m) => match x {
                    Value::String(k) => bool_out(m.contains_key(k)),
                    _ => Err(self.err(span, format!("an object's fields are strings, not {}", type_name(x)))),
                },
                Value::String(s) => match x {
                    Value::String(sub) => bool_out(s.contains(sub.as_str())),
                    _ => Err(self.err(span, format!("cannot look for {} in a string", type_name(x)))),
                },
                _ => Err(self.err(span, format!("cannot look inside {}", type_name(y)))),
            },
            BinOp::Add => match (x, y) {
                (Value::String(x), Value::String(y)) => Ok(Cow::Owned(Value::String(format!("{x}{y}")))),
                _ => self.arith(op, x, y, span),
            },
            _ => self.arith(op, x, y, span),
        }
    }

    fn arith(&self, op: BinOp, x: &Value, y: &Value, span: Span) -> Out<'i> {
        let (Value::Number(a), Value::Number(b)) = (x, y) else {
            return Err(self.err(span, format!("needs numbers, got {} and {}", type_name(x), type_name(y))));
        };
        let (a, b) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
        let r = match op {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div if b == 0.0 => return Err(self.err(span, "division by zero".into())),
            BinOp::Div => a / b,
            BinOp::Rem if b == 0.0 => return Err(self.err(span, "remainder of a division by zero".into())),
            _ => a % b,
        };
        self.finite(r, span)
    }

    fn call(&self, func: Func, args: &[Node], span: Span) -> Out<'i> {
        if func == Func::Has {
            return Ok(Cow::Owned(Value::Bool(self.path(&args[0])?.is_some())));
        }
        if matches!(func, Func::Min | Func::Max) {
            let mut best: Option<f64> = None;
            for a in args {
                let n = self.num(a, span)?;
                best = Some(match best {
                    None => n,
                    Some(b) if func == Func::Min => b.min(n),
                    Some(b) => b.max(n),
                });
            }
            return self.finite(best.unwrap_or(0.0), span);
        }
        let x = self.eval(&args[0])?;
        let text = |v: &Value| -> Result<String, EvalError> {
            match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.err(span, format!("needs a string, got {}", type_name(other)))),
            }
        };
        let n = |v: &Value| -> Result<f64, EvalError> {
            match v {
                Value::Number(n) => Ok(n.as_f64().unwrap_or(0.0)),
                other => Err(self.err(span, format!("needs a number, got {}", type_name(other)))),
            }
        };
        let out = match func {
            Func::Abs => number(n(&x)?.abs()),
            Func::Round => number(n(&x)?.round()),
            Func::Floor => number(n(&x)?.floor()),
            Func::Ceil => number(n(&x)?.ceil()),
            Func::Int => number(n(&x)?.trunc()),
            Func::Len => match x.as_ref() {
                Value::String(s) => Value::from(s.chars().count()),
                Value::Array(a) => Value::from(a.len()),
                Value::Object(m) => Value::from(m.len()),
                other => {
                    return Err(self.err(
                        span,
                        format!("len() needs a string, list or object, got {}", type_name(other)),
                    ))
                }
            },
            Func::Str => match x.as_ref() {
                Value::String(s) => Value::String(s.clone()),
                other => Value::String(other.to_string()),
            },
            Func::Num => match x.as_ref() {
                Value::Number(_) => x.into_owned(),
                Value::String(s) => match s.trim().parse::<f64>() {
                    Ok(v) if v.is_finite() => number(v),
                    _ => return Err(self.err(span, format!("{s:?} is not a number"))),
                },
                Value::Bool(b) => Value::from(u8::from(*b)),
                other => return Err(self.err(span, format!("cannot make a number of {}", type_name(other)))),
            },
            Func::Lower => Value::String(text(&x)?.to_lowercase()),
            Func::Upper => Value::String(text(&x)?.to_uppercase()),
            Func::Contains | Func::StartsWith | Func::EndsWith => {
                let other = self.eval(&args[1])?;
                let (s, sub) = (text(&x)?, text(other.as_ref())?);
                Value::Bool(match func {
                    Func::Contains => s.contains(&sub),
                    Func::StartsWith => s.starts_with(&sub),
                    _ => s.ends_with(&sub),
                })
            }
            Func::Has | Func::Min | Func::Max => Value::Null,
        };
        Ok(Cow::Owned(out))
    }
}

enum Step<'n> {
    Name(&'n String),
    Index(&'n Node),
}

/// JSON equality, with numbers compared by value (`1 == 1.0`).
fn equal(x: &Value, y: &Value) -> bool {
    match (x, y) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equal(a, b)),
        _ => x == y,
    }
}
