//! Recursive descent parser: tokens to a [`Node`] tree, with the nesting
//! bounded so neither parsing nor evaluation can run deep.

use super::lex::{Tok, Token};
use super::{ExprError, MAX_DEPTH};
use serde_json::Value;

/// A byte range of the source: where a node came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
}

/// The record fields an expression can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Root {
    Value,
    Key,
    Headers,
    Timestamp,
}

/// Binary operators (`&&` and `||` are [`Node::And`] and [`Node::Or`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// Built-in functions; there are no user functions and no loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Func {
    Has,
    Abs,
    Round,
    Floor,
    Ceil,
    Min,
    Max,
    Len,
    Str,
    Num,
    Int,
    Lower,
    Upper,
    Contains,
    StartsWith,
    EndsWith,
}

/// Function names as written, with their argument counts (min, max).
pub(super) const FUNCS: [(&str, Func, usize, usize); 16] = [
    ("has", Func::Has, 1, 1),
    ("abs", Func::Abs, 1, 1),
    ("round", Func::Round, 1, 1),
    ("floor", Func::Floor, 1, 1),
    ("ceil", Func::Ceil, 1, 1),
    ("min", Func::Min, 2, 8),
    ("max", Func::Max, 2, 8),
    ("len", Func::Len, 1, 1),
    ("string", Func::Str, 1, 1),
    ("number", Func::Num, 1, 1),
    ("int", Func::Int, 1, 1),
    ("lower", Func::Lower, 1, 1),
    ("upper", Func::Upper, 1, 1),
    ("contains", Func::Contains, 2, 2),
    ("starts_with", Func::StartsWith, 2, 2),
    ("ends_with", Func::EndsWith, 2, 2),
];

/// An expression tree.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Lit(Value),
    Root(Root),
    Field(Box<Node>, String, Span),
    Index(Box<Node>, Box<Node>, Span),
    List(Vec<Node>),
    Not(Box<Node>, Span),
    Neg(Box<Node>, Span),
    And(Box<Node>, Box<Node>, Span),
    Or(Box<Node>, Box<Node>, Span),
    Bin(BinOp, Box<Node>, Box<Node>, Span),
    Cond(Box<Node>, Box<Node>, Box<Node>, Span),
    Call(Func, Vec<Node>, Span),
}

pub(super) struct Parser<'s> {
    src: &'s str,
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl<'s> Parser<'s> {
    pub(super) fn new(src: &'s str, toks: Vec<Token>) -> Parser<'s> {
        Parser { src, toks, pos: 0, depth: 0 }
    }

    /// The whole input as one expression.
    pub(super) fn parse(mut self) -> Result<Node, ExprError> {
        let node = self.cond()?;
        match &self.peek().kind {
            Tok::End => Ok(node),
            _ => Err(self.err_here("expected an operator or the end of the expression")),
        }
    }

    fn peek(&self) -> &Token {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn at(&self) -> usize {
        self.peek().at
    }

    /// End of the previous token's source (for spans).
    fn prev_end(&self) -> usize {
        let next = self.at();
        self.src[..next].trim_end().len()
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    /// Steps back over `kind`, just taken by [`Self::bump`] (which does not
    /// move past the end).
    fn unbump(&mut self, kind: &Tok) {
        if *kind != Tok::End {
            self.pos -= 1;
        }
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(&self.peek().kind, Tok::Op(o) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), ExprError> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(self.err_here(&format!("expected {op:?}")))
        }
    }

    fn err_here(&self, what: &str) -> ExprError {
        let found = match &self.peek().kind {
            Tok::End => "the end".to_owned(),
            Tok::Num(n) => format!("{n}"),
            Tok::Str(s) => format!("{s:?}"),
            Tok::Ident(i) => i.clone(),
            Tok::Op(o) => format!("{o:?}"),
        };
        ExprError::at(self.src, self.at(), format!("{what}, found {found}"))
    }

    /// Enters one level of nesting; refused past [`MAX_DEPTH`].
    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::at(self.src, self.at(), format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn cond(&mut self) -> Result<Node, ExprError> {
        self.enter()?;
        let start = self.at();
        let c = self.or()?;
        let node = if self.eat("?") {
            let a = self.cond()?;
            self.expect(":")?;
            let b = self.cond()?;
            Node::Cond(Box::new(c), Box::new(a), Box::new(b), self.span(start))
        } else {
            c
        };
        self.depth -= 1;
        Ok(node)
    }

    fn span(&self, start: usize) -> Span {
        Span { start, end: self.prev_end().max(start) }
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let start = self.at();
        let mut lhs = self.and()?;
        while self.eat("||") {
            let rhs = self.and()?;
            lhs = Node::Or(Box::new(lhs), Box::new(rhs), self.span(start));
        }
        Ok(lhs)
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let start = self.at();
        let mut lhs = self.cmp()?;
        while self.eat("&&") {
            let rhs = self.cmp()?;
            lhs = Node::And(Box::new(lhs), Box::new(rhs), self.span(start));
        }
        Ok(lhs)
    }

    fn cmp(&mut self) -> Result<Node, ExprError> {
        let start = self.at();
        let lhs = self.add()?;
        let op = match &self.peek().kind {
            Tok::Op("==") => BinOp::Eq,
            Tok::Op("!=") => BinOp::Ne,
            Tok::Op("<") => BinOp::Lt,
            Tok::Op("<=") => BinOp::Le,
            Tok::Op(">") => BinOp::Gt,
            Tok::Op(">=") => BinOp::Ge,
            Tok::Ident(i) if i == "in" => BinOp::In,
            _ => return Ok(lhs),
        };
        self.bump();
        let rhs = self.add()?;
        if matches!(&self.peek().kind, Tok::Op("==" | "!=" | "<" | "<=" | ">" | ">=")) {
            return Err(self.err_here("comparisons do not chain (combine them with &&)"));
        }
        Ok(Node::Bin(op, Box::new(lhs), Box::new(rhs), self.span(start)))
    }

    fn add(&mut self) -> Result<Node, ExprError> {
        let start = self.at();
        let mut lhs = self.mul()?;
        loop {
            let op = match &self.peek().kind {
                Tok::Op("+") => BinOp::Add,
                Tok::Op("-") => BinOp::Sub,
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.mul()?;
            lhs = Node::Bin(op, Box::new(lhs), Box::new(rhs), self.span(start));
        }
    }

    fn mul(&mut self) -> Result<Node, ExprError> {
        let start = self.at();
        let mut lhs = self.unary()?;
        loop {
            let op = match &self.peek().kind {
                Tok::Op("*") => BinOp::Mul,
                Tok::Op("/") => BinOp::Div,
                Tok::Op("%") => BinOp::Rem,
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.unary()?;
            lhs = Node::Bin(op, Box::new(lhs), Box::new(rhs), self.span(start));
        }
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        let start = self.at();
        if self.eat("!") {
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner), self.span(start)));
        }
        if self.eat("-") {
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(match inner {
                Node::Lit(Value::Number(n)) => Node::Lit(super::eval::number(-n.as_f64().unwrap_or(0.0))),
                other => Node::Neg(Box::new(other), self.span(start)),
            });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Node, ExprError> {
        let start = self.at();
        let mut node = self.primary()?;
        loop {
            if self.eat(".") {
                match self.bump().kind {
                    Tok::Ident(name) => node = Node::Field(Box::new(node), name, self.span(start)),
                    other => {
                        self.unbump(&other);
                        return Err(self.err_here("expected a field name after \".\""));
                    }
                }
            } else if self.eat("[") {
                let index = self.cond()?;
                self.expect("]")?;
                node = Node::Index(Box::new(node), Box::new(index), self.span(start));
            } else {
                return Ok(node);
            }
        }
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let start = self.at();
        let tok = self.bump();
        match tok.kind {
            Tok::Num(n) => Ok(Node::Lit(super::eval::number(n))),
            Tok::Str(s) => Ok(Node::Lit(Value::String(s))),
            Tok::Op("(") => {
                let inner = self.cond()?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.cond()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Node::List(items))
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Node::Lit(Value::Bool(true))),
                "false" => Ok(Node::Lit(Value::Bool(false))),
                "null" => Ok(Node::Lit(Value::Null)),
                "value" => Ok(Node::Root(Root::Value)),
                "key" => Ok(Node::Root(Root::Key)),
                "headers" => Ok(Node::Root(Root::Headers)),
                "timestamp" => Ok(Node::Root(Root::Timestamp)),
                _ if self.eat("(") => self.call(&name, start),
                _ => Err(ExprError::at(
                    self.src,
                    start,
                    format!("unknown name {name:?} (a record has value, key, headers and timestamp)"),
                )),
            },
            other => {
                self.unbump(&other);
                Err(self.err_here("expected a value, a name or \"(\""))
            }
        }
    }

    fn call(&mut self, name: &str, start: usize) -> Result<Node, ExprError> {
        let Some(&(_, func, min, max)) = FUNCS.iter().find(|(n, ..)| *n == name) else {
            let known: Vec<&str> = FUNCS.iter().map(|(n, ..)| *n).collect();
            return Err(ExprError::at(
                self.src,
                start,
                format!("unknown function {name:?} (functions: {})", known.join(", ")),
            ));
        };
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.cond()?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        if args.len() < min || args.len() > max {
            let want = if min == max { format!("{min}") } else { format!("{min} to {max}") };
            return Err(ExprError::at(
                self.src,
                start,
                format!("{name}() takes {want} argument(s), got {}", args.len()),
            ));
        }
        if func == Func::Has && !matches!(args[0], Node::Field(..) | Node::Index(..)) {
            return Err(ExprError::at(self.src, start, "has() takes a field, e.g. has(value.hum)"));
        }
        Ok(Node::Call(func, args, self.span(start)))
    }
}
