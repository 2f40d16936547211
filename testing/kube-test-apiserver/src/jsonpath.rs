//! A small evaluator for the Kubernetes JSONPath dialect (client-go `util/jsonpath`)
//! as used by CRD `additionalPrinterColumns`: `.a.b`, `['a.b']`, `.a[0]`, `.a[-1]`,
//! `.a[1:3]`, `.a[*].b`, `.*`, `..a` (recursive descent), unions `[0,2]`, and
//! filters `[?(@.type=="Ready")]` (`==`, `!=`, `<`, `<=`, `>`, `>=` against a string,
//! number, boolean or `null` literal or another `@` path; `[?(@.x)]` tests existence).
//! Missing keys and out-of-range indices yield no result (client-go's
//! `AllowMissingKeys(true)`, which the apiserver uses for printer columns).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Wildcard,
    Index(i64),
    Slice(Option<i64>, Option<i64>, Option<i64>),
    Union(Vec<Step>),
    Filter(Filter),
    /// `..`: the current values and all their descendants.
    Recursive,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Vec<Step>),
    Literal(Value),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    left: Vec<Step>,
    /// `None`: existence test.
    cmp: Option<(String, Operand)>,
}

/// A parsed JSONPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    /// Parse `.a.b[0]`, also accepted wrapped in `{...}` and/or starting with `$`.
    pub fn parse(s: &str) -> Result<JsonPath, String> {
        let mut t = s.trim();
        if let Some(inner) = t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            t = inner.trim();
        }
        let t = t.strip_prefix('$').unwrap_or(t);
        let chars: Vec<char> = t.chars().collect();
        let mut p = Parser { s: &chars, i: 0 };
        let steps = p.steps(false)?;
        if p.i != chars.len() {
            return Err(format!("unexpected {:?} at {} in {s:?}", chars[p.i], p.i));
        }
        Ok(JsonPath(steps))
    }

    /// All matches, in document order.
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        eval(&self.0, vec![root])
    }
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn starts_with(&self, p: &str) -> bool {
        p.chars()
            .enumerate()
            .all(|(k, c)| self.s.get(self.i + k) == Some(&c))
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }

    /// Steps until the end (or, inside a filter, until an operator or `)`).
    fn steps(&mut self, in_filter: bool) -> Result<Vec<Step>, String> {
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some('.') if self.starts_with("..") => {
                    self.i += 2;
                    steps.push(Step::Recursive);
                    if self.peek() != Some('[') {
                        steps.push(self.field()?);
                    }
                }
                Some('.') => {
                    self.i += 1;
                    if self.peek() == Some('[') {
                        continue;
                    }
                    steps.push(self.field()?);
                }
                Some('[') => {
                    self.i += 1;
                    steps.push(self.bracket()?);
                }
                Some(_) if in_filter => break,
                Some(c) if steps.is_empty() && c != '@' => {
                    // a bare first field (`a.b`)
                    steps.push(self.field()?);
                }
                Some(c) => return Err(format!("unexpected {c:?} at {}", self.i)),
            }
        }
        Ok(steps)
    }

    /// A dotted field name; `\.` escapes a dot, `*` is the wildcard.
    fn field(&mut self) -> Result<Step, String> {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            match c {
                '\\' if self.s.get(self.i + 1).is_some() => {
                    name.push(self.s[self.i + 1]);
                    self.i += 2;
                }
                '.' | '[' | ')' | ' ' | '=' | '!' | '<' | '>' => break,
                _ => {
                    name.push(c);
                    self.i += 1;
                }
            }
        }
        match name.as_str() {
            "" => Err(format!("empty field name at {}", self.i)),
            "*" => Ok(Step::Wildcard),
            _ => Ok(Step::Field(name)),
        }
    }

    fn quoted(&mut self) -> Result<String, String> {
        let q = self.peek().ok_or("unterminated string")?;
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("unterminated string".into()),
                Some('\\') if self.s.get(self.i + 1).is_some() => {
                    out.push(self.s[self.i + 1]);
                    self.i += 2;
                }
                Some(c) if c == q => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// After `[`: `*`, `?(...)`, `'name'`, `0`, `-1`, `1:3`, unions; consumes `]`.
    fn bracket(&mut self) -> Result<Step, String> {
        self.skip_ws();
        let step = if self.peek() == Some('*') {
            self.i += 1;
            Step::Wildcard
        } else if self.starts_with("?(") {
            self.i += 2;
            let f = self.filter()?;
            self.skip_ws();
            if self.peek() != Some(')') {
                return Err(format!("expected ')' at {}", self.i));
            }
            self.i += 1;
            Step::Filter(f)
        } else {
            let mut parts = Vec::new();
            loop {
                self.skip_ws();
                let part = match self.peek() {
                    Some('\'') | Some('"') => Step::Field(self.quoted()?),
                    _ => {
                        let start = self.i;
                        while self.peek().is_some_and(|c| c != ']' && c != ',') {
                            self.i += 1;
                        }
                        let text: String = self.s[start..self.i].iter().collect();
                        index_or_slice(text.trim())?
                    }
                };
                parts.push(part);
                self.skip_ws();
                if self.peek() == Some(',') {
                    self.i += 1;
                } else {
                    break;
                }
            }
            if parts.len() == 1 {
                parts.pop().expect("one")
            } else {
                Step::Union(parts)
            }
        };
        self.skip_ws();
        if self.peek() != Some(']') {
            return Err(format!("expected ']' at {}", self.i));
        }
        self.i += 1;
        Ok(step)
    }

    fn operand_path(&mut self) -> Result<Vec<Step>, String> {
        if self.peek() != Some('@') {
            return Err(format!("expected '@' at {}", self.i));
        }
        self.i += 1;
        self.steps(true)
    }

    /// After `?(`, up to (not including) the closing `)`.
    fn filter(&mut self) -> Result<Filter, String> {
        self.skip_ws();
        let left = self.operand_path()?;
        self.skip_ws();
        let op = ["==", "!=", "<=", ">=", "<", ">"]
            .into_iter()
            .find(|op| self.starts_with(op));
        let Some(op) = op else {
            return Ok(Filter { left, cmp: None });
        };
        self.i += op.len();
        self.skip_ws();
        let right = match self.peek() {
            Some('@') => Operand::Path(self.operand_path()?),
            Some('\'') | Some('"') => Operand::Literal(Value::String(self.quoted()?)),
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| c != ')' && !c.is_whitespace()) {
                    self.i += 1;
                }
                let text: String = self.s[start..self.i].iter().collect();
                Operand::Literal(
                    serde_json::from_str::<Value>(&text)
                        .ok()
                        .filter(|v| !v.is_object() && !v.is_array())
                        .ok_or_else(|| format!("invalid literal {text:?}"))?,
                )
            }
        };
        Ok(Filter {
            left,
            cmp: Some((op.to_string(), right)),
        })
    }
}

fn index_or_slice(text: &str) -> Result<Step, String> {
    let int = |s: &str| -> Result<Option<i64>, String> {
        let s = s.trim();
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse()
                .map(Some)
                .map_err(|_| format!("invalid array index {s:?}"))
        }
    };
    if text.contains(':') {
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() > 3 {
            return Err(format!("invalid slice {text:?}"));
        }
        Ok(Step::Slice(
            int(parts[0])?,
            int(parts[1])?,
            parts.get(2).map(|s| int(s)).transpose()?.flatten(),
        ))
    } else {
        Ok(Step::Index(
            int(text)?.ok_or_else(|| "empty array index".to_string())?,
        ))
    }
}

fn descendants<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(v);
    match v {
        Value::Object(m) => m.values().for_each(|c| descendants(c, out)),
        Value::Array(a) => a.iter().for_each(|c| descendants(c, out)),
        _ => {}
    }
}

fn apply<'a>(step: &Step, v: &'a Value, out: &mut Vec<&'a Value>) {
    match (step, v) {
        (Step::Field(name), Value::Object(m)) => out.extend(m.get(name)),
        (Step::Wildcard, Value::Object(m)) => out.extend(m.values()),
        (Step::Wildcard, Value::Array(a)) => out.extend(a.iter()),
        (Step::Index(i), Value::Array(a)) => {
            let len = a.len() as i64;
            let i = if *i < 0 { len + i } else { *i };
            if (0..len).contains(&i) {
                out.push(&a[i as usize]);
            }
        }
        (Step::Slice(start, end, step), Value::Array(a)) => {
            let len = a.len() as i64;
            let clamp = |x: i64| (if x < 0 { len + x } else { x }).clamp(0, len);
            let s = clamp(start.unwrap_or(0));
            let e = clamp(end.unwrap_or(len));
            let step = step.filter(|s| *s > 0).unwrap_or(1);
            let mut k = s;
            while k < e {
                out.push(&a[k as usize]);
                k += step;
            }
        }
        (Step::Union(parts), _) => parts.iter().for_each(|p| apply(p, v, out)),
        (Step::Filter(f), Value::Array(a)) => out.extend(a.iter().filter(|x| f.matches(x))),
        (Step::Recursive, _) => descendants(v, out),
        _ => {}
    }
}

fn eval<'a>(steps: &[Step], start: Vec<&'a Value>) -> Vec<&'a Value> {
    steps.iter().fold(start, |cur, step| {
        let mut next = Vec::new();
        for v in cur {
            apply(step, v, &mut next);
        }
        next
    })
}

impl Filter {
    fn matches(&self, item: &Value) -> bool {
        let lefts = eval(&self.left, vec![item]);
        let Some((op, right)) = &self.cmp else {
            return !lefts.is_empty();
        };
        let Some(left) = lefts.first() else {
            return false;
        };
        let right = match right {
            Operand::Literal(v) => v,
            Operand::Path(p) => match eval(p, vec![item]).first() {
                Some(v) => *v,
                None => return false,
            },
        };
        compare(left, op, right)
    }
}

fn compare(left: &Value, op: &str, right: &Value) -> bool {
    use std::cmp::Ordering;
    let ord = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) if matches!(op, "==" | "!=") => Some(a.cmp(b)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        // incomparable types: only `!=` holds
        _ => return op == "!=",
    };
    let Some(ord) = ord else { return false };
    match op {
        "==" => ord == Ordering::Equal,
        "!=" => ord != Ordering::Equal,
        "<" => ord == Ordering::Less,
        "<=" => ord != Ordering::Greater,
        ">" => ord == Ordering::Greater,
        ">=" => ord != Ordering::Less,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find(path: &str, v: &Value) -> Vec<Value> {
        JsonPath::parse(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .find(v)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn paths() {
        let v = json!({
            "metadata": {"name": "n", "annotations": {"a.b/c": "x"}},
            "spec": {"items": [{"k": 1, "t": "a"}, {"k": 2, "t": "b"}, {"k": 3}]},
            "status": {"conditions": [
                {"type": "Synced", "status": "False"},
                {"type": "Ready", "status": "True", "reason": "Ok"}
            ]}
        });
        assert_eq!(find(".metadata.name", &v), [json!("n")]);
        assert_eq!(find("{.metadata.name}", &v), [json!("n")]);
        assert_eq!(find("$.metadata.name", &v), [json!("n")]);
        assert_eq!(find(".metadata.annotations['a.b/c']", &v), [json!("x")]);
        assert_eq!(find(r".metadata.annotations.a\.b/c", &v), [json!("x")]);
        assert_eq!(find(".spec.items[0].k", &v), [json!(1)]);
        assert_eq!(find(".spec.items[-1].k", &v), [json!(3)]);
        assert_eq!(find(".spec.items[*].k", &v), [json!(1), json!(2), json!(3)]);
        assert_eq!(find(".spec.items[*].t", &v), [json!("a"), json!("b")]);
        assert_eq!(find(".spec.items[1:].k", &v), [json!(2), json!(3)]);
        assert_eq!(find(".spec.items[0,2].k", &v), [json!(1), json!(3)]);
        assert_eq!(find("..reason", &v), [json!("Ok")]);
        assert!(find(".spec.items[7].k", &v).is_empty());
        assert!(find(".nope.deeper", &v).is_empty());
        for p in [
            r#".status.conditions[?(@.type=="Ready")].status"#,
            r#".status.conditions[?(@.type == 'Ready')].status"#,
            r#".status.conditions[?(@.type!="Synced")].status"#,
            r#".status.conditions[?(@.reason)].status"#,
        ] {
            assert_eq!(find(p, &v), [json!("True")], "{p}");
        }
        assert!(find(r#".status.conditions[?(@.type=="Gone")].status"#, &v).is_empty());
        assert_eq!(find(".spec.items[?(@.k > 1)].k", &v), [json!(2), json!(3)]);
        assert_eq!(find(".spec.items[?(@.k == 2)].t", &v), [json!("b")]);
    }

    #[test]
    fn parse_errors() {
        for p in [".a[", ".a[?(@.b==)]", ".a[x]", ".a..", "@"] {
            assert!(JsonPath::parse(p).is_err(), "{p}");
        }
    }
}
