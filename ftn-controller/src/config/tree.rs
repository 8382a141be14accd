//! The parse tree with every key's and value's position, and the typed readers over it
//! (`want_str`, `want_duration`, ...) that report a problem with its line and field.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use super::*;

// ------------------------------------------------------------------------------------------
// A TOML tree that remembers where everything was
// ------------------------------------------------------------------------------------------

// `toml`'s public parse tree (`toml::de::DeTable`, with `preserve_order`) gives every key and
// value its byte span, in file order; [`tree`] turns it into the `Item`s the readers below walk.
/// Byte range in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
}

/// A key of a table, with its span.
#[derive(Debug)]
pub(super) struct Key {
    pub(super) name: String,
    pub(super) span: Option<Span>,
}

/// A value, with its span.
#[derive(Debug)]
pub(super) struct Item {
    pub(super) span: Option<Span>,
    pub(super) node: Node,
}

#[derive(Debug)]
pub(super) enum Node {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Item>),
    /// In file order.
    Table(Vec<(Key, Item)>),
}

impl Node {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::Str(_) => "a string",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Bool(_) => "a boolean",
            Node::Datetime(_) => "a datetime",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }

    /// The kind, with the value for a scalar: `an integer (80)`.
    pub(super) fn describe(&self) -> String {
        let kind = self.kind();
        match self {
            Node::Str(v) => format!("{kind} ({v:?})"),
            Node::Int(v) => format!("{kind} ({v})"),
            Node::Float(v) => format!("{kind} ({v})"),
            Node::Bool(v) => format!("{kind} ({v})"),
            Node::Datetime(v) => format!("{kind} ({v})"),
            Node::Array(_) | Node::Table(_) => kind.to_owned(),
        }
    }
}

pub(super) fn span(range: std::ops::Range<usize>) -> Option<Span> {
    Some(Span {
        start: range.start,
        end: range.end,
    })
}

/// The `Item` tree of a parsed value.
pub(super) fn tree(v: &toml::Spanned<toml::de::DeValue<'_>>) -> Item {
    use toml::de::DeValue;
    let node = match v.get_ref() {
        DeValue::String(s) => Node::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Node::Int(n),
            // Beyond i64 (TOML's integers): shown as the float it is closest to, which every
            // reader refuses with the value in the message.
            Err(_) => Node::Float(
                u128::from_str_radix(i.as_str(), i.radix()).map_or(f64::NAN, |n| n as f64),
            ),
        },
        DeValue::Float(f) => Node::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Node::Bool(*b),
        DeValue::Datetime(d) => Node::Datetime(d.to_string()),
        DeValue::Array(a) => Node::Array(a.iter().map(tree).collect()),
        DeValue::Table(t) => Node::Table(table_entries(t)),
    };
    Item {
        span: span(v.span()),
        node,
    }
}

pub(super) fn table_entries(t: &toml::de::DeTable<'_>) -> Vec<(Key, Item)> {
    t.iter()
        .map(|(k, v)| {
            (
                Key {
                    name: k.get_ref().to_string(),
                    span: span(k.span()),
                },
                tree(v),
            )
        })
        .collect()
}

/// 1-based line and column (in characters) of a byte offset (one offset; [`Lines`] for many).
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    Lines::new(text).line_col(offset)
}

/// Line and column of many offsets of one text: the line starts are found once, then each
/// offset costs a binary search and its own line (a file of 100,000 resources with as many
/// problems is reported in well under a second, not in minutes).
pub(super) struct Lines<'a> {
    text: &'a str,
    starts: std::cell::OnceCell<Vec<usize>>,
}

impl<'a> Lines<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Lines {
            text,
            starts: std::cell::OnceCell::new(),
        }
    }

    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let text = self.text;
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let starts = self.starts.get_or_init(|| {
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let line = starts.partition_point(|&s| s <= offset);
        let start = starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

// ------------------------------------------------------------------------------------------
// Reading the tree
// ------------------------------------------------------------------------------------------

pub(super) struct Ctx<'a> {
    /// Line and column of the offsets in `text`.
    pub(super) lines: Lines<'a>,
    /// Directory of the file (relative `token_file`s are relative to it).
    pub(super) base_dir: PathBuf,
    pub(super) problems: Vec<Problem>,
}

impl Ctx<'_> {
    pub(super) fn report(&mut self, at: Option<Span>, field: &str, message: impl Into<String>) {
        let (line, column) = match at {
            Some(s) => {
                let (l, c) = self.lines.line_col(s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.problems.push(Problem {
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn line_of(&self, at: Option<Span>) -> String {
        match at {
            Some(s) => format!(" (line {})", self.lines.line_col(s.start).0),
            None => String::new(),
        }
    }
}

/// A table being read: its entries, its span and its field path (`""` for the document).
pub(super) struct Table<'a> {
    pub(super) entries: &'a [(Key, Item)],
    pub(super) span: Option<Span>,
    pub(super) path: String,
}

impl<'a> Table<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&'a Item> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    pub(super) fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Reports every key not in `allowed`.
    pub(super) fn deny_unknown(&self, ctx: &mut Ctx, allowed: &[&str]) {
        for (k, _) in self.entries {
            if !allowed.contains(&k.name.as_str()) {
                ctx.report(
                    k.span,
                    &self.field(&k.name),
                    unknown_field(&k.name, allowed),
                );
            }
        }
    }

    /// The value of a required key; reports it when missing.
    pub(super) fn required(&self, ctx: &mut Ctx, name: &str) -> Option<&'a Item> {
        let item = self.get(name);
        if item.is_none() {
            let at = if self.path.is_empty() {
                String::new()
            } else {
                format!(" in {}", self.path)
            };
            ctx.report(
                self.span,
                &self.field(name),
                format!("missing field `{name}`{at}"),
            );
        }
        item
    }
}

/// serde's wording, plus a suggestion for a near miss.
pub(super) fn unknown_field(name: &str, allowed: &[&str]) -> String {
    let list = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>();
    let expected = match list.len() {
        0 => "there are no fields".to_owned(),
        1 => format!("expected {}", list[0]),
        2 => format!("expected {} or {}", list[0], list[1]),
        _ => format!("expected one of {}", list.join(", ")),
    };
    let mut msg = format!("unknown field `{name}`, {expected}");
    if let Some(s) = suggestion(name, allowed.iter().copied()) {
        msg.push_str(&format!(" (did you mean `{s}`?)"));
    }
    msg
}

/// The candidate closest to `name`, if it is a likely typo (edit distance <= 2, or a plural).
pub(super) fn suggestion<'c>(
    name: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .map(|c| {
            let d = if name.strip_suffix('s') == Some(c) {
                1
            } else {
                edit_distance(name, c)
            };
            (d, c)
        })
        .filter(|&(d, c)| d <= 2 && d < c.len().max(name.len()))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn wrong_type(ctx: &mut Ctx, item: &Item, field: &str, expected: &str) {
    ctx.report(
        item.span,
        field,
        format!("expected {expected}, found {}", item.node.describe()),
    );
}

/// The required `name` of a server or resource, checked, with its span.
pub(super) fn read_name(ctx: &mut Ctx, t: &Table) -> (Option<String>, Option<Span>) {
    let Some(item) = t.required(ctx, "name") else {
        return (None, None);
    };
    let field = t.field("name");
    let Some(name) = want_str(ctx, item, &field) else {
        return (None, None);
    };
    match check_name(name) {
        Ok(()) => (Some(name.to_owned()), item.span),
        Err(why) => {
            ctx.report(item.span, &field, why);
            (None, item.span)
        }
    }
}

pub(super) fn want_str<'a>(ctx: &mut Ctx, item: &'a Item, field: &str) -> Option<&'a str> {
    match &item.node {
        Node::Str(s) => Some(s),
        _ => {
            wrong_type(ctx, item, field, "a string");
            None
        }
    }
}

pub(super) fn want_int(ctx: &mut Ctx, item: &Item, field: &str) -> Option<i64> {
    match item.node {
        Node::Int(v) => Some(v),
        _ => {
            wrong_type(ctx, item, field, "an integer");
            None
        }
    }
}

pub(super) fn want_bool(ctx: &mut Ctx, item: &Item, field: &str) -> Option<bool> {
    match item.node {
        Node::Bool(v) => Some(v),
        _ => {
            wrong_type(ctx, item, field, "a boolean (true or false)");
            None
        }
    }
}

pub(super) fn want_array<'a>(ctx: &mut Ctx, item: &'a Item, field: &str) -> Option<&'a [Item]> {
    match &item.node {
        Node::Array(a) => Some(a),
        _ => {
            wrong_type(ctx, item, field, "an array");
            None
        }
    }
}

pub(super) fn want_table<'a>(ctx: &mut Ctx, item: &'a Item, path: String) -> Option<Table<'a>> {
    match &item.node {
        Node::Table(entries) => Some(Table {
            entries,
            span: item.span,
            path,
        }),
        _ => {
            wrong_type(ctx, item, &path, "a table");
            None
        }
    }
}

/// An integer in `min..=max`.
pub(super) fn want_range(
    ctx: &mut Ctx,
    item: &Item,
    field: &str,
    min: i64,
    max: i64,
) -> Option<i64> {
    let v = want_int(ctx, item, field)?;
    if v < min || v > max {
        let msg = if max == i64::from(u32::MAX) {
            format!("must be at least {min}, got {v}")
        } else {
            format!("must be between {min} and {max}, got {v}")
        };
        ctx.report(item.span, field, msg);
        return None;
    }
    Some(v)
}

pub(super) fn want_port(ctx: &mut Ctx, item: &Item, field: &str) -> Option<u16> {
    let v = want_int(ctx, item, field)?;
    match u16::try_from(v) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            ctx.report(
                item.span,
                field,
                format!("invalid port {v}: a port is between 1 and 65535"),
            );
            None
        }
    }
}

pub(super) fn want_duration(ctx: &mut Ctx, item: &Item, field: &str) -> Option<Duration> {
    let s = match &item.node {
        Node::Str(s) => s,
        _ => {
            ctx.report(
                item.span,
                field,
                format!(
                    "expected a duration string such as \"50ms\", \"2s\" or \"1m\", found {}",
                    item.node.describe()
                ),
            );
            return None;
        }
    };
    match humantime::parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.report(
                item.span,
                field,
                format!("invalid duration {s:?}: {e} (write e.g. \"50ms\", \"2s\", \"1m\")"),
            );
            None
        }
    }
}

/// One of the strings of `choices`.
pub(super) fn want_choice<T: Copy>(
    ctx: &mut Ctx,
    item: &Item,
    field: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let s = want_str(ctx, item, field)?;
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
        return Some(*v);
    }
    let list = choices
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    ctx.report(
        item.span,
        field,
        format!("unknown value {s:?}, expected one of {list}"),
    );
    None
}

/// A non-empty absolute path.
pub(super) fn want_abs_path(ctx: &mut Ctx, item: &Item, field: &str) -> Option<PathBuf> {
    let s = want_str(ctx, item, field)?;
    if !s.starts_with('/') {
        ctx.report(
            item.span,
            field,
            format!("{s:?} is not an absolute path (it must start with '/')"),
        );
        return None;
    }
    Some(PathBuf::from(s))
}

/// Parses an IP address; `role` is "server address" or "VIP".
pub(super) fn want_ip(ctx: &mut Ctx, item: &Item, field: &str, role: &str) -> Option<IpAddr> {
    let s = want_str(ctx, item, field)?;
    let ip = match s.trim().parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let hint = if s.parse::<SocketAddr>().is_ok() {
                " (write the address alone: ports belong to checks and resources)"
            } else if s.contains('/') {
                " (write one address, not a prefix)"
            } else {
                ""
            };
            ctx.report(
                item.span,
                field,
                format!("invalid IP address {s:?}: expected an IPv4 or IPv6 address{hint}"),
            );
            return None;
        }
    };
    let refused = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        ip if ip.is_multicast() => Some("a multicast address"),
        ip if ip.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some("an IPv4-mapped IPv6 address"),
        _ => None,
    };
    if let Some(what) = refused {
        let hint = match ip {
            IpAddr::V6(a) => a
                .to_ipv4_mapped()
                .filter(|v4| !v4.is_unspecified())
                .map(|v4| format!(" (write {v4})"))
                .unwrap_or_default(),
            IpAddr::V4(_) => String::new(),
        };
        ctx.report(
            item.span,
            field,
            format!("{ip} is {what}; it cannot be a {role}{hint}"),
        );
        return None;
    }
    Some(ip)
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "name {name:?} is too long ({} characters, at most 63)",
            name.chars().count()
        ));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "invalid name {name:?}: a name starts with a letter or a digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid name {name:?}: {c:?} is not allowed (letters, digits, '.', '_' and '-' only)"
        ));
    }
    Ok(())
}

/// The kernel's `dev_valid_name`.
pub(super) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name must not be empty".into());
    }
    if name.len() > 15 {
        return Err(format!("longer than 15 bytes ({})", name.len()));
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not interface names".into());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("'/', ':', whitespace and control characters are not allowed".into());
    }
    Ok(())
}

/// A bearer token: non-empty, no whitespace or control characters.
pub(super) fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("the token is empty");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the token must not contain whitespace or control characters");
    }
    Ok(())
}

pub(super) fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
