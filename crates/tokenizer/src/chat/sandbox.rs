//! The template sandbox: bounds on the time and memory of one render.
//!
//! minijinja's fuel counts instructions, and the output cap sees only what
//! reaches the output; neither bounds one instruction that builds a huge
//! value (`'%99999999999s'|format('x')`, `s ~ s` doubling a string each
//! time round a loop, `[x]` nesting a list a million deep, a `{% set %}`
//! capture doubling itself). So the template is compiled here and its
//! instructions rewritten before they run:
//!
//! - string concatenation (`~`), `+` and `*` call guarded functions that
//!   measure their result before building it;
//! - every emitted value — to the output or to a capture (`{% set %}`
//!   blocks, macro bodies) — is measured and counted against the output cap;
//! - every value a filter, function, method, call or list/map literal
//!   returns is checked: strings no longer than the largest value, nesting
//!   at most [`Limits::max_depth`] deep, its text no longer than the largest
//!   value (so no later operation can print it into something bigger);
//! - filters and methods that can make far more than their input in one
//!   call (`format`, `indent`, `replace`, `join`, `batch`, `slice`, `list`,
//!   `split`, `lines`, `pprint`, `string`, `.format()`, `.replace()`,
//!   `.join()`, `.split()`, `.splitlines()`) check the size of what they
//!   will make first.
//!
//! - every filter and test call, every method call on a string or list,
//!   `in` and comparisons are charged the size of their operands first, so
//!   a loop cannot run a linear-time operation on a large value millions of
//!   times (`l|max`, `x in l`, `s.find('y')` a hundred thousand times over a
//!   list of a million elements); lazy sequences (`[1] * 10**9`, folded
//!   while compiling) are measured element by element when printed, and a
//!   constant list may not be repeated past [`Limits::max_items`].
//!
//! Every byte made or measured is charged to a work budget, so the total
//! time and memory of a render are bounded whatever the template does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use minijinja::machinery::{self, ast, Instruction, Instructions};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};

/// What one render may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Instructions (minijinja's fuel).
    pub fuel: u64,
    /// Bytes of output; also the largest string or printed value.
    pub max_output: usize,
    /// Bytes made, copied or measured in all, over the whole render.
    pub max_work: u64,
    /// Elements of one list built by the template.
    pub max_items: usize,
    /// Nesting of lists and maps.
    pub max_depth: usize,
}

/// Which limit a render ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// More output (with captures) than [`Limits::max_output`] allows.
    Output,
    /// A value larger than [`Limits::max_output`] bytes.
    Value(u64),
    /// More work than [`Limits::max_work`].
    Work,
    /// A list of more than [`Limits::max_items`] elements.
    Items(u64),
    /// Nesting deeper than [`Limits::max_depth`].
    Depth,
}

/// One render's budget, shared by the guard functions.
pub(crate) struct Budget {
    pub(crate) limits: Limits,
    work: AtomicU64,
    emitted: AtomicU64,
    exceeded: Mutex<Option<Exceeded>>,
}

/// Names of the guard functions: `~` cannot start an identifier, so a
/// template can neither call nor shadow them.
const CONCAT: &str = "~concat";
const ADD: &str = "~add";
const MUL: &str = "~mul";
const EMIT: &str = "~emit";
const CHECK: &str = "~check";
const FILTER: &str = "~filter";
const TEST: &str = "~test";
const IN: &str = "~in";
const EQ: &str = "~eq";
const NE: &str = "~ne";
const LT: &str = "~lt";
const LTE: &str = "~lte";
const GT: &str = "~gt";
const GTE: &str = "~gte";

/// Bytes charged per element of a list made (a `Value` and its slot).
const ITEM_BYTES: u64 = 32;

impl Budget {
    pub(crate) fn new(limits: Limits) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            work: AtomicU64::new(0),
            emitted: AtomicU64::new(0),
            exceeded: Mutex::new(None),
        })
    }

    /// The limit the render ran into, if any.
    pub(crate) fn exceeded(&self) -> Option<Exceeded> {
        *self.exceeded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, what: Exceeded, message: String) -> Error {
        let mut slot = self.exceeded.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(what);
        Error::new(ErrorKind::InvalidOperation, message)
    }

    /// Charges `bytes` of work.
    fn charge(&self, bytes: u64) -> Result<(), Error> {
        let used = self
            .work
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if used > self.limits.max_work {
            return Err(self.fail(
                Exceeded::Work,
                format!(
                    "the template's work exceeds {} bytes made or copied",
                    self.limits.max_work
                ),
            ));
        }
        Ok(())
    }

    fn max_value(&self) -> u64 {
        self.limits.max_output as u64
    }

    /// Fails unless a value of `bytes` bytes is allowed; charges it.
    fn value_of(&self, bytes: u64) -> Result<(), Error> {
        if bytes > self.max_value() {
            return Err(self.fail(
                Exceeded::Value(bytes),
                format!(
                    "a value of {bytes} bytes exceeds the limit of {} bytes",
                    self.max_value()
                ),
            ));
        }
        self.charge(bytes)
    }

    /// Fails unless a list of `n` elements is allowed; charges it.
    fn items(&self, n: u64) -> Result<(), Error> {
        if n > self.limits.max_items as u64 {
            return Err(self.fail(
                Exceeded::Items(n),
                format!(
                    "a list of {n} elements exceeds the limit of {}",
                    self.limits.max_items
                ),
            ));
        }
        self.charge(n.saturating_mul(ITEM_BYTES))
    }

    /// The length of `v` as text (`{v}`), measured without building it and
    /// charged as work; an error past the largest value.
    fn text_len(&self, v: &Value) -> Result<u64, Error> {
        if let Some(s) = v.as_str() {
            return Ok(s.len() as u64);
        }
        match v.kind() {
            // Lazy sequences (a constant list repeated while compiling, a
            // range) print every element: measured as they print, up to the
            // largest value.
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => {}
            // Scalars and plain objects print short.
            _ => return Ok(64),
        }
        self.depth(v)?;
        let mut w = Counter::new(self.max_value());
        let _ = write!(w, "{v}");
        self.charge(w.n)?;
        if w.over() {
            return Err(self.fail(
                Exceeded::Value(w.n),
                format!("a value printed as more than {} bytes", self.max_value()),
            ));
        }
        Ok(w.n)
    }

    /// Fails if `v` nests lists and maps deeper than the limit; the walk
    /// (which stops at the limit) is charged as work.
    fn depth(&self, v: &Value) -> Result<(), Error> {
        let max = self.limits.max_depth;
        let mut stack: Vec<(Value, usize)> = vec![(v.clone(), 1)];
        let mut visited = 0u64;
        while let Some((v, d)) = stack.pop() {
            visited += 1;
            if visited.is_multiple_of(4096) {
                self.charge(4096 * 8)?;
            }
            let children: Box<dyn Iterator<Item = Value>> = match v.kind() {
                ValueKind::Seq => match v.try_iter() {
                    Ok(it) => Box::new(it),
                    Err(_) => continue,
                },
                ValueKind::Map => match v.try_iter() {
                    Ok(keys) => {
                        let values: Vec<Value> = keys.filter_map(|k| v.get_item(&k).ok()).collect();
                        Box::new(values.into_iter())
                    }
                    Err(_) => continue,
                },
                _ => continue,
            };
            for c in children {
                if matches!(c.kind(), ValueKind::Seq | ValueKind::Map) {
                    if d + 1 > max {
                        return Err(self.fail(
                            Exceeded::Depth,
                            format!("lists and maps nested deeper than {max}"),
                        ));
                    }
                    stack.push((c, d + 1));
                }
            }
        }
        self.charge(visited.saturating_mul(8))
    }

    /// Checks a value the template has just made: its nesting and, for a
    /// string, list or map, its size as text.
    fn check(&self, v: &Value) -> Result<(), Error> {
        if let Some(s) = v.as_str() {
            return self.value_of(s.len() as u64);
        }
        if v.kind() == ValueKind::Iterable {
            // A lazy sequence (a range) costs nothing until it is used, and
            // every use is measured: printing walks it, filters are charged.
            return self.charge(size_of(v));
        }
        self.text_len(v).map(|_| ())
    }
}

/// Counts bytes written, failing once past `cap`.
struct Counter {
    n: u64,
    cap: u64,
}

impl Counter {
    fn new(cap: u64) -> Counter {
        Counter { n: 0, cap }
    }
    fn over(&self) -> bool {
        self.n > self.cap
    }
}

impl std::fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.n += s.len() as u64;
        if self.over() {
            Err(std::fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// What an operation that reads all of `v` is charged: its bytes for a
/// string, [`ITEM_BYTES`] an element for a list or map (and for a lazy
/// sequence of known length); nothing for a scalar.
fn size_of(v: &Value) -> u64 {
    if let Some(s) = v.as_str() {
        return s.len() as u64;
    }
    match v.kind() {
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => {
            (v.len().unwrap_or(0) as u64).saturating_mul(ITEM_BYTES)
        }
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// Compiling with guards.

/// The longest template accepted (real ones are a few KiB).
pub(crate) const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// The most tokens inside one `{{ }}` or `{% %}` tag: expressions nest no
/// deeper than their tokens, so parsing, constant folding and compiling
/// (all recursive) stay shallow and fast.
pub(crate) const MAX_TAG_TOKENS: usize = 1024;
/// minijinja's own cap on a string repeated by `*` (constant folding stops there).
const MINIJINJA_MAX_REPEAT: u64 = 100_000_000;

/// Why a template was not compiled.
pub(crate) enum CompileError {
    /// It does not parse.
    Syntax(Error),
    /// It exceeds a limit before it runs.
    Limit(String),
}

/// Parses `source` with Hugging Face's whitespace settings (trim_blocks,
/// lstrip_blocks, no trailing newline) and rewrites its instructions (see
/// the module docs). Before parsing, the template's size and the tokens of
/// each tag are bounded; before compiling, what minijinja's constant folding
/// would build (`'x' * 99999999 ~ 'x' * 99999999 ~ ...` is folded while
/// compiling, before any guard runs) is measured on the syntax tree.
pub(crate) fn compile<'s>(
    name: &'s str,
    source: &'s str,
    limits: &Limits,
) -> Result<(Instructions<'s>, BTreeMap<&'s str, Instructions<'s>>), CompileError> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(CompileError::Limit(format!(
            "the template is {} bytes, the limit is {MAX_TEMPLATE_BYTES}",
            source.len()
        )));
    }
    let ws = machinery::WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    let mut in_tag = 0usize;
    for token in machinery::tokenize(source, false, Default::default(), ws) {
        // A lexing error is the parser's to report, with its place.
        let Ok((token, span)) = token else { break };
        match token {
            machinery::Token::VariableStart | machinery::Token::BlockStart => in_tag = 1,
            machinery::Token::VariableEnd | machinery::Token::BlockEnd => in_tag = 0,
            _ if in_tag > 0 => {
                in_tag += 1;
                if in_tag > MAX_TAG_TOKENS {
                    return Err(CompileError::Limit(format!(
                        "a tag at line {} has more than {MAX_TAG_TOKENS} tokens",
                        span.start_line
                    )));
                }
            }
            _ => {}
        }
    }
    let ast =
        machinery::parse(source, name, Default::default(), ws).map_err(CompileError::Syntax)?;
    let mut folding = Folding {
        each: limits.max_output as u64,
        total: (limits.max_output as u64).saturating_mul(4),
        used: 0,
        lists: (source.len() as u64).saturating_mul(2).saturating_add(64),
        max_items: limits.max_items as u64,
    };
    folding.stmt(&ast).map_err(CompileError::Limit)?;
    let mut g = machinery::CodeGenerator::new(name, source);
    g.compile_stmt(&ast);
    let (root, blocks) = g.finish();
    for code in std::iter::once(&root).chain(blocks.values()) {
        for i in 0..code.len() as u32 {
            if let Some(
                Instruction::ApplyFilter(f, None, _) | Instruction::PerformTest(f, None, _),
            ) = code.get(i)
            {
                return Err(CompileError::Limit(format!(
                    "`{f}` is called with *args, whose arguments the sandbox cannot measure (line {})",
                    code.get_line(i).unwrap_or(0)
                )));
            }
        }
    }
    let root = guard(&root, name, source);
    let blocks = blocks
        .iter()
        .map(|(k, b)| (*k, guard(b, name, source)))
        .collect();
    Ok((root, blocks))
}

/// What constant folding makes of an expression (see [`Folding`]).
#[derive(Clone)]
enum Folded {
    /// A string of this many bytes.
    Str(u64),
    /// A number.
    Num(Value),
    /// A list literal, maybe concatenated or repeated lazily: its length as
    /// text and its elements.
    List(u64, u64),
    /// Anything short (a bool, a map literal).
    Small,
}

/// Replays minijinja's constant folding (`Expr::as_const`, called by the
/// code generator on every expression it compiles, then on the children of
/// those that are not constant) without building the strings, charging the
/// size of each string folding would build.
struct Folding {
    /// The largest string.
    each: u64,
    /// All strings built while compiling.
    total: u64,
    used: u64,
    /// A bound on a list literal's length as text.
    lists: u64,
    /// The most elements a folded list may have ([`Limits::max_items`]).
    max_items: u64,
}

type Fold = Result<Option<Folded>, String>;

impl Folding {
    fn size(&self, f: &Folded) -> u64 {
        match f {
            Folded::Str(n) | Folded::List(n, _) => *n,
            Folded::Num(_) | Folded::Small => 32,
        }
    }

    fn string(&mut self, n: u64) -> Fold {
        self.used = self.used.saturating_add(n);
        if n > self.each || self.used > self.total {
            return Err(format!(
                "a constant expression builds {n} bytes while compiling (the limit is {} bytes, {} in all)",
                self.each, self.total
            ));
        }
        Ok(Some(Folded::Str(n)))
    }

    /// A list folded while compiling: minijinja repeats and concatenates
    /// constant lists lazily, so `[1] * 10**9` costs nothing until it is
    /// used, then a billion elements. Refused past the list limit.
    fn list(&mut self, text: u64, items: u64) -> Fold {
        if items > self.max_items {
            return Err(format!(
                "a constant expression builds a list of {items} elements while compiling (the limit is {})",
                self.max_items
            ));
        }
        Ok(Some(Folded::List(text, items)))
    }

    fn as_const(&mut self, e: &ast::Expr<'_>) -> Fold {
        use ast::Expr;
        Ok(match e {
            Expr::Const(c) => Some(match c.value.as_str() {
                Some(s) => Folded::Str(s.len() as u64),
                None if c.value.kind() == ValueKind::Number => Folded::Num(c.value.clone()),
                None => Folded::Small,
            }),
            Expr::List(l) => l
                .items
                .iter()
                .all(|x| matches!(x, Expr::Const(_)))
                .then_some(Folded::List(self.lists, l.items.len() as u64)),
            Expr::Map(m) => (m
                .keys
                .iter()
                .chain(&m.values)
                .all(|x| matches!(x, Expr::Const(_))))
            .then_some(Folded::Small),
            Expr::UnaryOp(u) => match (self.as_const(&u.expr)?, &u.op) {
                (None, _) => None,
                (Some(_), ast::UnaryOpKind::Not) => Some(Folded::Small),
                (Some(Folded::Num(x)), ast::UnaryOpKind::Neg) => {
                    native("-", &x, &Value::UNDEFINED).ok().map(Folded::Num)
                }
                (Some(_), ast::UnaryOpKind::Neg) => None,
            },
            Expr::BinOp(b) => {
                let l = self.as_const(&b.left)?;
                let r = self.as_const(&b.right)?;
                match (l, r) {
                    (Some(l), Some(r)) => self.binop(&b.op, l, r)?,
                    _ => None,
                }
            }
            Expr::Compare(c) => {
                let mut all = self.as_const(&c.expr)?.is_some();
                for op in &c.ops {
                    all &= self.as_const(&op.expr)?.is_some();
                }
                all.then_some(Folded::Small)
            }
            _ => None,
        })
    }

    fn binop(&mut self, op: &ast::BinOpKind, l: Folded, r: Folded) -> Fold {
        use ast::BinOpKind as B;
        let numbers = |op: &str, l: &Folded, r: &Folded| match (l, r) {
            (Folded::Num(a), Folded::Num(b)) => native(op, a, b).ok().map(Folded::Num),
            _ => None,
        };
        Ok(match op {
            B::Concat => {
                let n = self.size(&l).saturating_add(self.size(&r));
                return self.string(n);
            }
            B::Add => match (&l, &r) {
                (Folded::Str(a), Folded::Str(b)) => return self.string(a.saturating_add(*b)),
                (Folded::List(a, m), Folded::List(b, n)) => {
                    return self.list(a.saturating_add(*b), m.saturating_add(*n))
                }
                _ => numbers("+", &l, &r),
            },
            B::Mul => match (&l, &r) {
                (Folded::Str(n), Folded::Num(k)) | (Folded::Num(k), Folded::Str(n)) => {
                    match k.as_usize().map(|k| n.saturating_mul(k as u64)) {
                        Some(total) if total <= MINIJINJA_MAX_REPEAT => return self.string(total),
                        _ => None,
                    }
                }
                (Folded::List(t, n), Folded::Num(k)) | (Folded::Num(k), Folded::List(t, n)) => {
                    match k.as_usize() {
                        Some(k) => {
                            return self
                                .list(t.saturating_mul(k as u64), n.saturating_mul(k as u64))
                        }
                        None => None,
                    }
                }
                _ => numbers("*", &l, &r),
            },
            B::Sub => numbers("-", &l, &r),
            B::Div => numbers("/", &l, &r),
            B::FloorDiv => numbers("//", &l, &r),
            B::Rem => numbers("%", &l, &r),
            B::Pow => numbers("**", &l, &r),
            B::ScAnd | B::ScOr => Some(if self.size(&l) >= self.size(&r) { l } else { r }),
            _ => Some(Folded::Small),
        })
    }

    /// What the code generator does with an expression: fold it if it is
    /// constant, else compile its parts.
    fn expr(&mut self, e: &ast::Expr<'_>) -> Result<(), String> {
        use ast::Expr;
        if self.as_const(e)?.is_some() {
            return Ok(());
        }
        match e {
            Expr::Var(_) | Expr::Const(_) => {}
            Expr::Slice(x) => {
                self.expr(&x.expr)?;
                for part in [&x.start, &x.stop, &x.step].into_iter().flatten() {
                    self.expr(part)?;
                }
            }
            Expr::UnaryOp(x) => self.expr(&x.expr)?,
            Expr::BinOp(x) => {
                self.expr(&x.left)?;
                self.expr(&x.right)?;
            }
            Expr::Compare(x) => {
                self.expr(&x.expr)?;
                for op in &x.ops {
                    self.expr(&op.expr)?;
                }
            }
            Expr::IfExpr(x) => {
                self.expr(&x.test_expr)?;
                self.expr(&x.true_expr)?;
                if let Some(f) = &x.false_expr {
                    self.expr(f)?;
                }
            }
            Expr::Filter(x) => {
                if let Some(v) = &x.expr {
                    self.expr(v)?;
                }
                self.args(&x.args)?;
            }
            Expr::Test(x) => {
                self.expr(&x.expr)?;
                self.args(&x.args)?;
            }
            Expr::GetAttr(x) => self.expr(&x.expr)?,
            Expr::GetItem(x) => {
                self.expr(&x.expr)?;
                self.expr(&x.subscript_expr)?;
            }
            Expr::Call(x) => self.call(x)?,
            Expr::List(x) => {
                for i in &x.items {
                    self.expr(i)?;
                }
            }
            Expr::Map(x) => {
                for i in x.keys.iter().chain(&x.values) {
                    self.expr(i)?;
                }
            }
        }
        Ok(())
    }

    fn call(&mut self, c: &ast::Call<'_>) -> Result<(), String> {
        self.expr(&c.expr)?;
        self.args(&c.args)
    }

    fn args(&mut self, args: &[ast::CallArg<'_>]) -> Result<(), String> {
        for a in args {
            match a {
                ast::CallArg::Pos(e)
                | ast::CallArg::Kwarg(_, e)
                | ast::CallArg::PosSplat(e)
                | ast::CallArg::KwargSplat(e) => self.expr(e)?,
            }
        }
        Ok(())
    }

    fn body(&mut self, body: &[ast::Stmt<'_>]) -> Result<(), String> {
        body.iter().try_for_each(|s| self.stmt(s))
    }

    fn stmt(&mut self, s: &ast::Stmt<'_>) -> Result<(), String> {
        use ast::Stmt;
        match s {
            Stmt::Template(t) => self.body(&t.children)?,
            Stmt::EmitExpr(e) => self.expr(&e.expr)?,
            Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
            Stmt::ForLoop(f) => {
                self.expr(&f.target)?;
                self.expr(&f.iter)?;
                if let Some(e) = &f.filter_expr {
                    self.expr(e)?;
                }
                self.body(&f.body)?;
                self.body(&f.else_body)?;
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr)?;
                self.body(&i.true_body)?;
                self.body(&i.false_body)?;
            }
            Stmt::WithBlock(w) => {
                for (target, e) in &w.assignments {
                    self.expr(target)?;
                    self.expr(e)?;
                }
                self.body(&w.body)?;
            }
            Stmt::Set(x) => {
                self.expr(&x.target)?;
                self.expr(&x.expr)?;
            }
            Stmt::SetBlock(x) => {
                self.expr(&x.target)?;
                if let Some(f) = &x.filter {
                    self.expr(f)?;
                }
                self.body(&x.body)?;
            }
            Stmt::AutoEscape(x) => {
                self.expr(&x.enabled)?;
                self.body(&x.body)?;
            }
            Stmt::FilterBlock(x) => {
                self.expr(&x.filter)?;
                self.body(&x.body)?;
            }
            Stmt::Block(x) => self.body(&x.body)?,
            Stmt::Import(x) => {
                self.expr(&x.expr)?;
                self.expr(&x.name)?;
            }
            Stmt::FromImport(x) => {
                self.expr(&x.expr)?;
                for (a, b) in &x.names {
                    self.expr(a)?;
                    if let Some(b) = b {
                        self.expr(b)?;
                    }
                }
            }
            Stmt::Extends(x) => self.expr(&x.name)?,
            Stmt::Include(x) => self.expr(&x.name)?,
            Stmt::Macro(m) => self.macro_decl(m)?,
            Stmt::CallBlock(c) => {
                self.call(&c.call)?;
                self.macro_decl(&c.macro_decl)?;
            }
            Stmt::Do(d) => self.call(&d.call)?,
        }
        Ok(())
    }

    fn macro_decl(&mut self, m: &ast::Macro<'_>) -> Result<(), String> {
        for e in m.args.iter().chain(&m.defaults) {
            self.expr(e)?;
        }
        self.body(&m.body)
    }
}

/// `old` with guard calls inserted and jump targets moved accordingly.
fn guard<'s>(old: &Instructions<'s>, name: &'s str, source: &'s str) -> Instructions<'s> {
    let n = old.len();
    // Each old instruction becomes a group; `start[i]` is where group i begins.
    let mut groups: Vec<Vec<Instruction<'s>>> = Vec::with_capacity(n);
    for i in 0..n {
        let instr = old.get(i as u32).expect("index below len").clone();
        let call = |f: &'s str, args: u16| Instruction::CallFunction(f, Some(args));
        let group = match instr {
            Instruction::StringConcat => vec![call(CONCAT, 2)],
            Instruction::Add => vec![call(ADD, 2)],
            Instruction::Mul => vec![call(MUL, 2)],
            Instruction::In => vec![call(IN, 2)],
            Instruction::Eq => vec![call(EQ, 2)],
            Instruction::Ne => vec![call(NE, 2)],
            Instruction::Lt => vec![call(LT, 2)],
            Instruction::Lte => vec![call(LTE, 2)],
            Instruction::Gt => vec![call(GT, 2)],
            Instruction::Gte => vec![call(GTE, 2)],
            // The name goes last: `~filter` charges the operands, then applies it.
            Instruction::ApplyFilter(f, Some(n), _) => {
                vec![Instruction::LoadConst(Value::from(f)), call(FILTER, n + 1)]
            }
            Instruction::PerformTest(f, Some(n), _) => {
                vec![Instruction::LoadConst(Value::from(f)), call(TEST, n + 1)]
            }
            Instruction::Emit => vec![call(EMIT, 1), Instruction::Emit],
            Instruction::EmitRaw(s) => vec![
                Instruction::LoadConst(Value::from(s)),
                call(EMIT, 1),
                Instruction::Emit,
            ],
            Instruction::CallFunction(f, _) if f.starts_with('~') => vec![instr],
            Instruction::ApplyFilter(..)
            | Instruction::CallFunction(..)
            | Instruction::CallMethod(..)
            | Instruction::CallObject(..)
            | Instruction::BuildList(..)
            | Instruction::BuildMap(..)
            | Instruction::Slice
            | Instruction::EndCapture => vec![instr, call(CHECK, 1)],
            other => vec![other],
        };
        groups.push(group);
    }
    let mut start = Vec::with_capacity(n + 1);
    let mut at = 0u32;
    for g in &groups {
        start.push(at);
        at += g.len() as u32;
    }
    start.push(at);
    let to = |t: u32| start.get(t as usize).copied().unwrap_or(at);
    let mut new = Instructions::new(name, source);
    for (i, group) in groups.into_iter().enumerate() {
        let span = old.get_span(i as u32);
        let line = old.get_line(i as u32);
        for instr in group {
            let instr = match instr {
                Instruction::Jump(t) => Instruction::Jump(to(t)),
                Instruction::JumpIfFalse(t) => Instruction::JumpIfFalse(to(t)),
                Instruction::JumpIfFalseOrPop(t) => Instruction::JumpIfFalseOrPop(to(t)),
                Instruction::JumpIfTrueOrPop(t) => Instruction::JumpIfTrueOrPop(to(t)),
                Instruction::Iterate(t) => Instruction::Iterate(to(t)),
                Instruction::BuildMacro(m, t, flags) => Instruction::BuildMacro(m, to(t), flags),
                other => other,
            };
            match (span, line) {
                (Some(span), _) => new.add_with_span(instr, span),
                (None, Some(line)) => new.add_with_line(instr, line as u16),
                (None, None) => new.add(instr),
            };
        }
    }
    new
}

// ---------------------------------------------------------------------------
// The guard functions and guarded filters.

/// minijinja's own `+`, `*` and `~` for the operands the guards pass on
/// (numbers, and whatever the guards have already measured): expressions
/// compiled once in a plain environment.
fn native(op: &str, a: &Value, b: &Value) -> Result<Value, Error> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    let env = ENV.get_or_init(Environment::empty);
    let source = match op {
        "+" => "a + b",
        "*" => "a * b",
        "-" if b.is_undefined() => "-a",
        "-" => "a - b",
        "/" => "a / b",
        "//" => "a // b",
        "%" => "a % b",
        "**" => "a ** b",
        "in" => "a in b",
        _ => "a ~ b",
    };
    env.compile_expression(source)?
        .eval(minijinja::context! { a => a.clone(), b => b.clone() })
}

fn is_seq(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// The elements of `v`, at most the budget's list limit.
fn items(budget: &Budget, v: &Value) -> Result<Vec<Value>, Error> {
    let limit = budget.limits.max_items;
    let mut out = Vec::new();
    for (i, x) in v.try_iter()?.enumerate() {
        if i >= limit {
            budget.items(i as u64 + 1)?;
        }
        out.push(x);
    }
    budget.items(out.len() as u64)?;
    Ok(out)
}

fn concat(budget: &Budget, a: &Value, b: &Value) -> Result<Value, Error> {
    let n = budget.text_len(a)? + budget.text_len(b)?;
    budget.value_of(n)?;
    Ok(Value::from(format!("{a}{b}")))
}

fn add(budget: &Budget, a: &Value, b: &Value) -> Result<Value, Error> {
    if a.as_str().is_some() && b.as_str().is_some() {
        return concat(budget, a, b);
    }
    if is_seq(a) && is_seq(b) {
        let mut all = items(budget, a)?;
        all.extend(items(budget, b)?);
        budget.items(all.len() as u64)?;
        let v = Value::from(all);
        budget.check(&v)?;
        return Ok(v);
    }
    native("+", a, b)
}

fn mul(budget: &Budget, a: &Value, b: &Value) -> Result<Value, Error> {
    let (x, n) = if a.kind() == ValueKind::Number {
        (b, a)
    } else {
        (a, b)
    };
    if n.kind() == ValueKind::Number && (x.as_str().is_some() || is_seq(x)) {
        let Some(n) = n.as_usize() else {
            return native("*", a, b);
        };
        if let Some(s) = x.as_str() {
            budget.value_of((s.len() as u64).saturating_mul(n as u64))?;
            return Ok(Value::from(s.repeat(n)));
        }
        let one = items(budget, x)?;
        budget.items((one.len() as u64).saturating_mul(n as u64))?;
        let mut all = Vec::with_capacity(one.len() * n);
        for _ in 0..n {
            all.extend(one.iter().cloned());
        }
        let v = Value::from(all);
        budget.check(&v)?;
        return Ok(v);
    }
    native("*", a, b)
}

/// Charges an operation that reads all of `args` (see [`size_of`]).
fn charge_reading(budget: &Budget, args: &[Value]) -> Result<(), Error> {
    let n = args.iter().fold(0u64, |n, a| n.saturating_add(size_of(a)));
    budget.charge(n)
}

/// A filter or test name as the VM looks it up (ASCII whitespace removed).
fn normalized(name: &Value) -> String {
    name.as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect()
}

/// `~filter(value, args..., name)`: the filter `name` applied to
/// `value, args...` once they are charged, its result checked.
fn filter(budget: &Budget, state: &State, args: &[Value]) -> Result<Value, Error> {
    let (name, args) = args
        .split_last()
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "a filter call without a name"))?;
    let name = normalized(name);
    let name = name.as_str();
    charge_reading(budget, args)?;
    let v = state.apply_filter(name, args).map_err(|e| match e.kind() {
        ErrorKind::UnknownFilter => Error::new(
            ErrorKind::UnknownFilter,
            format!("filter {name} is unknown"),
        ),
        _ => e,
    })?;
    budget.check(&v)?;
    Ok(v)
}

/// `~test(value, args..., name)`: the test `name`, its operands charged.
fn test(budget: &Budget, state: &State, args: &[Value]) -> Result<Value, Error> {
    let (name, args) = args
        .split_last()
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "a test call without a name"))?;
    let name = normalized(name);
    let name = name.as_str();
    charge_reading(budget, args)?;
    // minijinja's divisibleby computes `a % 0` on integers: a panic.
    if name == "divisibleby" && args.get(1).and_then(Value::as_i64) == Some(0) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "divisibleby(0): division by zero",
        ));
    }
    state
        .perform_test(name, args)
        .map(Value::from)
        .map_err(|e| match e.kind() {
            ErrorKind::UnknownTest => {
                Error::new(ErrorKind::UnknownTest, format!("test {name} is unknown"))
            }
            _ => e,
        })
}

/// A comparison (`==`, `<`, ...) as the VM makes it, charged the smaller
/// operand: comparing lists or strings walks them.
fn compare(budget: &Budget, op: &str, a: &Value, b: &Value) -> Result<Value, Error> {
    budget.charge(size_of(a).min(size_of(b)))?;
    Ok(Value::from(match op {
        "==" => a == b,
        "!=" => a != b,
        "<" => a < b,
        "<=" => a <= b,
        ">" => a > b,
        _ => a >= b,
    }))
}

fn emit(budget: &Budget, v: &Value) -> Result<(), Error> {
    let n = budget.text_len(v)?;
    // Captured output is emitted again when it is used: allow for that.
    let cap = (budget.limits.max_output as u64).saturating_mul(4);
    let total = budget
        .emitted
        .fetch_add(n, Ordering::Relaxed)
        .saturating_add(n);
    if total > cap {
        return Err(budget.fail(
            Exceeded::Output,
            format!(
                "the template's output exceeds {} bytes",
                budget.limits.max_output
            ),
        ));
    }
    budget.charge(n)
}

/// An upper bound on the length of `format_str` formatted with `args`, in
/// either style: every width or precision in a specifier may pad, and every
/// specifier may print the longest argument.
fn format_bound(
    budget: &Budget,
    format_str: &str,
    args: &[Value],
    printf: bool,
) -> Result<u64, Error> {
    let mut longest = 0u64;
    let mut largest_number = 0u64;
    for a in args {
        longest = longest.max(budget.text_len(a)?);
        if let Some(x) = a.as_i64() {
            largest_number = largest_number.max(x.unsigned_abs());
        }
    }
    let mut specs = 0u64;
    let mut widest = 0u64;
    let mut dynamic = false;
    let bytes = format_str.as_bytes();
    let mut i = 0;
    let number = |i: &mut usize| -> u64 {
        let mut v = 0u64;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            v = v
                .saturating_mul(10)
                .saturating_add(u64::from(bytes[*i] - b'0'));
            *i += 1;
        }
        v
    };
    while i < bytes.len() {
        match (printf, bytes[i]) {
            (true, b'%') => {
                i += 1;
                if bytes.get(i) == Some(&b'%') {
                    i += 1;
                    continue;
                }
                specs += 1;
                if bytes.get(i) == Some(&b'(') {
                    while i < bytes.len() && bytes[i] != b')' {
                        i += 1;
                    }
                    i += 1;
                }
                while i < bytes.len() && b"-+ #0".contains(&bytes[i]) {
                    i += 1;
                }
                while i < bytes.len()
                    && (bytes[i].is_ascii_digit() || bytes[i] == b'*' || bytes[i] == b'.')
                {
                    if bytes[i] == b'*' {
                        dynamic = true;
                        i += 1;
                    } else if bytes[i] == b'.' {
                        i += 1;
                    } else {
                        widest = widest.max(number(&mut i));
                    }
                }
            }
            (false, b'{') => {
                i += 1;
                if bytes.get(i) == Some(&b'{') {
                    i += 1;
                    continue;
                }
                specs += 1;
                let mut depth = 1;
                while i < bytes.len() && depth > 0 {
                    match bytes[i] {
                        b'{' => {
                            depth += 1;
                            dynamic = true;
                            i += 1;
                        }
                        b'}' => {
                            depth -= 1;
                            i += 1;
                        }
                        c if c.is_ascii_digit() => widest = widest.max(number(&mut i)),
                        _ => i += 1,
                    }
                }
            }
            _ => i += 1,
        }
    }
    if dynamic {
        widest = widest.max(largest_number);
    }
    Ok((format_str.len() as u64)
        .saturating_add(specs.saturating_mul(widest.saturating_add(longest).saturating_add(32))))
}

/// Checks a filter's arguments (the value first); may hand back replacements
/// (an iterable collected once while it was measured).
type PreCheck = fn(&Budget, &[Value]) -> Result<Option<Vec<Value>>, Error>;

/// A builtin filter wrapped so that `pre` checks its arguments (the value
/// first) before it runs.
fn guarded_filter(
    env: &mut Environment<'_>,
    budget: &Arc<Budget>,
    name: &'static str,
    original: Value,
    pre: PreCheck,
) {
    let budget = budget.clone();
    env.add_filter(
        name,
        move |state: &State, args: Rest<Value>| -> Result<Value, Error> {
            let args = match pre(&budget, &args)? {
                Some(replaced) => replaced,
                None => args.0,
            };
            original.call(state, &args)
        },
    );
}

fn str_arg(args: &[Value], i: usize) -> Option<&str> {
    args.get(i).and_then(Value::as_str)
}

/// The number of pieces `s.split(sep)` gives (`None`: on whitespace).
fn pieces(s: &str, sep: Option<&str>) -> u64 {
    match sep {
        None => s.split_whitespace().count() as u64,
        Some("") => s.chars().count() as u64 + 2,
        Some(sep) => s.matches(sep).count() as u64 + 1,
    }
}

/// The length of `s` with every `from` replaced by `to`.
fn replaced_len(s: &str, from: &str, to: &str) -> u64 {
    let n = if from.is_empty() {
        s.chars().count() as u64 + 1
    } else {
        s.matches(from).count() as u64
    };
    (s.len() as u64).saturating_add(n.saturating_mul(to.len() as u64))
}

/// Checks `sep.join(items)` and hands back the items, collected once.
fn join_bound(budget: &Budget, sep: &str, seq: &Value) -> Result<Value, Error> {
    let all = items(budget, seq)?;
    let mut n = (sep.len() as u64).saturating_mul(all.len().saturating_sub(1) as u64);
    for x in &all {
        n = n.saturating_add(budget.text_len(x)?);
        if n > budget.max_value() {
            break;
        }
    }
    budget.value_of(n)?;
    Ok(Value::from(all))
}

/// Registers the guard functions and guarded filters and methods on `env`.
pub(crate) fn install(env: &mut Environment<'_>, budget: &Arc<Budget>) {
    let b = budget.clone();
    env.add_function(CONCAT, move |a: Value, c: Value| concat(&b, &a, &c));
    let b = budget.clone();
    env.add_function(ADD, move |a: Value, c: Value| add(&b, &a, &c));
    let b = budget.clone();
    env.add_function(MUL, move |a: Value, c: Value| mul(&b, &a, &c));
    let b = budget.clone();
    env.add_function(EMIT, move |v: Value| emit(&b, &v).map(|()| v));
    let b = budget.clone();
    env.add_function(CHECK, move |v: Value| b.check(&v).map(|()| v));
    let b = budget.clone();
    env.add_function(FILTER, move |state: &State, args: Rest<Value>| {
        filter(&b, state, &args)
    });
    let b = budget.clone();
    env.add_function(TEST, move |state: &State, args: Rest<Value>| {
        test(&b, state, &args)
    });
    let b = budget.clone();
    env.add_function(IN, move |x: Value, container: Value| {
        b.charge(size_of(&container))?;
        native("in", &x, &container)
    });
    for (name, op) in [
        (EQ, "=="),
        (NE, "!="),
        (LT, "<"),
        (LTE, "<="),
        (GT, ">"),
        (GTE, ">="),
    ] {
        let b = budget.clone();
        env.add_function(name, move |x: Value, y: Value| compare(&b, op, &x, &y));
    }

    use minijinja::filters as f;
    guarded_filter(
        env,
        budget,
        "format",
        Value::from_function(f::format),
        |b, a| {
            let fmt = str_arg(a, 0).unwrap_or_default();
            let n = format_bound(b, fmt, a.get(1..).unwrap_or_default(), true)?;
            b.value_of(n).map(|()| None)
        },
    );
    guarded_filter(
        env,
        budget,
        "indent",
        Value::from_function(f::indent),
        |b, a| {
            let s = str_arg(a, 0).unwrap_or_default();
            let mut width = a.get(1).and_then(Value::as_usize).unwrap_or(4) as u64;
            if let Some(kw) = a.last().filter(|v| v.kind() == ValueKind::Map) {
                if let Ok(w) = kw.get_attr("width") {
                    width = width.max(w.as_usize().unwrap_or(0) as u64);
                }
            }
            let lines = s.matches('\n').count() as u64 + 1;
            b.value_of((s.len() as u64).saturating_add(lines.saturating_mul(width)))
                .map(|()| None)
        },
    );
    guarded_filter(
        env,
        budget,
        "replace",
        Value::from_function(f::replace),
        |b, a| {
            let (s, from, to) = (
                str_arg(a, 0).unwrap_or_default(),
                str_arg(a, 1).unwrap_or_default(),
                str_arg(a, 2).unwrap_or_default(),
            );
            b.value_of(replaced_len(s, from, to)).map(|()| None)
        },
    );
    guarded_filter(
        env,
        budget,
        "join",
        Value::from_function(f::join),
        |b, a| {
            let Some(seq) = a.first() else {
                return Ok(None);
            };
            if !is_seq(seq) && seq.kind() != ValueKind::Map {
                return Ok(None);
            }
            let sep = str_arg(a, 1).unwrap_or_default();
            let mut args = a.to_vec();
            args[0] = join_bound(b, sep, seq)?;
            Ok(Some(args))
        },
    );
    fn fill_bound(b: &Budget, a: &[Value]) -> Result<Option<Vec<Value>>, Error> {
        let count = a.get(1).and_then(Value::as_usize).unwrap_or(1) as u64;
        let Some(seq) = a.first() else {
            return Ok(None);
        };
        let all = if seq.as_str().is_some() || is_seq(seq) || seq.kind() == ValueKind::Map {
            items(b, seq)?
        } else {
            return Ok(None);
        };
        b.items(count.saturating_add(all.len() as u64))?;
        let mut args = a.to_vec();
        args[0] = Value::from(all);
        Ok(Some(args))
    }
    guarded_filter(
        env,
        budget,
        "batch",
        Value::from_function(f::batch),
        fill_bound,
    );
    guarded_filter(
        env,
        budget,
        "slice",
        Value::from_function(f::slice),
        fill_bound,
    );
    guarded_filter(
        env,
        budget,
        "list",
        Value::from_function(f::list),
        |b, a| match a.first() {
            Some(v) if v.as_str().is_some() => {
                b.items(v.as_str().unwrap_or_default().chars().count() as u64)?;
                Ok(None)
            }
            Some(v) if is_seq(v) || v.kind() == ValueKind::Map => {
                let all = items(b, v)?;
                Ok(Some(vec![Value::from(all)]))
            }
            _ => Ok(None),
        },
    );
    guarded_filter(
        env,
        budget,
        "split",
        Value::from_function(f::split),
        |b, a| {
            if let Some(s) = str_arg(a, 0) {
                b.items(pieces(s, str_arg(a, 1)))?;
            }
            Ok(None)
        },
    );
    guarded_filter(
        env,
        budget,
        "lines",
        Value::from_function(f::lines),
        |b, a| {
            if let Some(s) = str_arg(a, 0) {
                b.items(s.lines().count() as u64)?;
            }
            Ok(None)
        },
    );
    guarded_filter(
        env,
        budget,
        "string",
        Value::from_function(f::string),
        |b, a| {
            if let Some(v) = a.first() {
                let n = b.text_len(v)?;
                b.value_of(n)?;
            }
            Ok(None)
        },
    );
    guarded_filter(
        env,
        budget,
        "pprint",
        Value::from_function(f::pprint),
        |b, a| {
            if let Some(v) = a.first() {
                b.depth(v)?;
                let mut w = Counter::new(b.max_value());
                let _ = write!(w, "{v:#?}");
                b.value_of(w.n)?;
            }
            Ok(None)
        },
    );

    let b = budget.clone();
    env.set_unknown_method_callback(
        move |state: &State, value: &Value, method: &str, args: &[Value]| {
            // String and list methods read their receiver (find, count, index, ...).
            charge_reading(&b, std::slice::from_ref(value))?;
            charge_reading(&b, args)?;
            if let Some(s) = value.as_str() {
                match method {
                    // minijinja-contrib's count loops forever on an empty
                    // needle; Python counts the gaps between characters.
                    "count" if str_arg(args, 0) == Some("") && args.len() == 1 => {
                        return Ok(Value::from(s.chars().count() + 1));
                    }
                    "format" => {
                        let n = format_bound(&b, s, args, false)?;
                        b.value_of(n)?;
                    }
                    "replace" => {
                        let (from, to) = (
                            str_arg(args, 0).unwrap_or_default(),
                            str_arg(args, 1).unwrap_or_default(),
                        );
                        b.value_of(replaced_len(s, from, to))?;
                    }
                    "join" => {
                        if let Some(seq) = args.first() {
                            let all = join_bound(&b, s, seq)?;
                            return minijinja_contrib::pycompat::unknown_method_callback(
                                state,
                                value,
                                method,
                                &[all],
                            );
                        }
                    }
                    "split" => b.items(pieces(s, str_arg(args, 0)))?,
                    "splitlines" => b.items(s.lines().count() as u64)?,
                    _ => {}
                }
            }
            minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Arc<Budget> {
        Budget::new(Limits {
            fuel: 1000,
            max_output: 1000,
            max_work: 1 << 20,
            max_items: 100,
            max_depth: 8,
        })
    }

    #[test]
    fn format_bounds_cover_widths_precisions_and_arguments() {
        let b = budget();
        let args = [Value::from("xyz")];
        assert!(format_bound(&b, "%5s|%.2f", &args, true).unwrap() >= 5 + 3);
        assert!(format_bound(&b, "%99999999999s", &args, true).unwrap() >= 99_999_999_999);
        assert!(format_bound(&b, "{:>99999}", &args, false).unwrap() >= 99_999);
        let n = [Value::from(123_456_789)];
        assert!(format_bound(&b, "%*d", &n, true).unwrap() >= 123_456_789);
        assert!(format_bound(&b, "{:{}}", &n, false).unwrap() >= 123_456_789);
        assert_eq!(format_bound(&b, "100%% {{x}}", &[], true).unwrap(), 11);
    }

    #[test]
    fn pieces_and_replacements_are_counted_without_building_them() {
        assert_eq!(pieces("a b  c", None), 3);
        assert_eq!(pieces("abc", Some("")), 5);
        assert_eq!(pieces("a,b,c", Some(",")), 3);
        assert_eq!(replaced_len("aaa", "a", "bb"), 9);
        assert_eq!(replaced_len("ab", "", "xyz"), 2 + 3 * 3);
    }
}
