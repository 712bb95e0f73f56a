//! The rule expression language: small, safe, always terminating.
//!
//! An expression reads one record: `value` (its JSON value; a value that is
//! not JSON is a string), `key` (a string, or null), `headers` (an object of
//! strings) and `timestamp` (ms since the epoch). It has literals (numbers,
//! `"strings"` or `'strings'`, `true`, `false`, `null`, `[lists]`), field
//! and index access (`value.temp`, `value["a b"]`, `value.list[0]`,
//! `value.list[-1]`), `! - * / % + -` (`+` also joins strings), comparisons
//! `== != < <= > >=` and `in` (list member, object field, substring),
//! `&& ||` (short-circuit), `c ? a : b`, and the functions listed in
//! [`parse::FUNCS`] (`has(value.hum)`, `abs`, `round`, `min`, `len`, ...).
//!
//! There are no loops, no user functions, no variables: evaluation visits
//! each node of the tree at most once, and the tree is bounded (at most
//! [`MAX_LEN`] bytes of source, [`MAX_DEPTH`] levels of nesting and
//! [`MAX_TREE_DEPTH`] levels in all), so every evaluation terminates in
//! time linear in the expression (times the size of the values it copies).
//!
//! Expressions are compiled once when a rule is loaded ([`Expr::compile`]);
//! errors name the 1-based column. Evaluation errors (a missing field, a
//! wrong type) name the column and the failing part of the source.

mod eval;
mod lex;
pub(crate) mod parse;

pub(crate) use eval::{number, type_name};
use parse::Node;
use serde_json::Value;
use std::fmt;

/// Longest expression source accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses, unary operators, conditionals, calls.
pub const MAX_DEPTH: usize = 32;
/// Deepest tree in all (chains like `a + b + c` count one level per operator).
pub const MAX_TREE_DEPTH: usize = 128;

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    src: String,
    root: Node,
}

/// What a record offers to expressions.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// The parsed value.
    pub value: &'a Value,
    /// The key as a string, or null.
    pub key: Value,
    /// Header names to values (an object).
    pub headers: Value,
    /// Record timestamp, ms since the epoch.
    pub timestamp_ms: i64,
}

/// An expression that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// 1-based column (in characters) of the problem.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl ExprError {
    pub(crate) fn at(src: &str, byte: usize, message: impl Into<String>) -> ExprError {
        let byte = byte.min(src.len());
        let column = src.get(..byte).map_or(byte, |s| s.chars().count()) + 1;
        ExprError { column, message: message.into() }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ExprError {}

/// An expression that failed on one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// 1-based column of the failing part.
    pub column: usize,
    /// The failing part of the source, e.g. `value.hum`.
    pub text: String,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() {
            write!(f, "column {}: {}", self.column, self.message)
        } else {
            write!(f, "column {}: {} {}", self.column, self.text, self.message)
        }
    }
}

impl std::error::Error for EvalError {}

impl Expr {
    /// Parses `src` once; the result can be evaluated any number of times.
    pub fn compile(src: &str) -> Result<Expr, ExprError> {
        if src.len() > MAX_LEN {
            return Err(ExprError { column: 1, message: format!("longer than {MAX_LEN} bytes") });
        }
        if src.trim().is_empty() {
            return Err(ExprError { column: 1, message: "is empty".into() });
        }
        let toks = lex::tokens(src)?;
        let root = parse::Parser::new(src, toks).parse()?;
        if depth(&root) > MAX_TREE_DEPTH {
            return Err(ExprError {
                column: 1,
                message: format!("more than {MAX_TREE_DEPTH} operators deep; split it"),
            });
        }
        Ok(Expr { src: src.to_owned(), root })
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// The value of the expression for one record.
    pub fn eval(&self, input: &Input<'_>) -> Result<Value, EvalError> {
        eval::Eval { src: &self.src, input }.eval(&self.root).map(std::borrow::Cow::into_owned)
    }

    /// Evaluates to a boolean, or says what it gave instead.
    pub fn eval_bool(&self, input: &Input<'_>) -> Result<bool, EvalError> {
        match self.eval(input)? {
            Value::Bool(b) => Ok(b),
            other => Err(self.whole(format!("gave {}, not true or false", type_name(&other)))),
        }
    }

    /// Evaluates to a finite number, or says what it gave instead.
    pub fn eval_f64(&self, input: &Input<'_>) -> Result<f64, EvalError> {
        match self.eval(input)? {
            Value::Number(n) => Ok(n.as_f64().unwrap_or(0.0)),
            other => Err(self.whole(format!("gave {}, not a number", type_name(&other)))),
        }
    }

    /// The top-level call of an aggregate such as `avg(value.temp)`: its
    /// name and its argument compiled alone; `None` when the expression is
    /// not a call of one identifier.
    pub fn split_call(src: &str) -> Option<(&str, &str)> {
        let s = src.trim();
        let open = s.find('(')?;
        let name = s[..open].trim();
        let inner = s[open + 1..].strip_suffix(')')?;
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .then_some((name, inner))
    }

    fn whole(&self, message: String) -> EvalError {
        EvalError { column: 1, text: String::new(), message: format!("the expression {message}") }
    }
}

/// Depth of a tree (bounded by the source length, itself bounded).
fn depth(node: &Node) -> usize {
    use Node::*;
    1 + match node {
        Lit(_) | Root(_) => 0,
        Field(a, _, _) | Not(a, _) | Neg(a, _) => depth(a),
        Index(a, b, _) | And(a, b, _) | Or(a, b, _) | Bin(_, a, b, _) => depth(a).max(depth(b)),
        Cond(a, b, c, _) => depth(a).max(depth(b)).max(depth(c)),
        List(items) | Call(_, items, _) => items.iter().map(depth).max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;
