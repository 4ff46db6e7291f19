//! A small XML tree for AWS replies, on the `xmlparser` tokenizer: element
//! names (namespace prefixes dropped), text with the five entities and
//! character references decoded, children in order. Attributes, comments
//! and processing instructions are skipped; a DTD is refused. Bounded:
//! [`MAX_DEPTH`] levels and [`MAX_ELEMENTS`] elements (the document's size
//! is bounded by the HTTP layer's reply limit).

use xmlparser::{ElementEnd, Token, Tokenizer};

use super::Error;

/// Nesting deeper than this is refused (EC2 replies nest about 8 deep).
pub const MAX_DEPTH: usize = 64;
/// More elements than this are refused (a DescribeInstances page of 1,000
/// instances has about 150,000).
pub const MAX_ELEMENTS: usize = 250_000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    pub name: String,
    /// The element's own text (not its children's), decoded.
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first direct child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every direct child named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows direct children along `path`.
    pub fn at(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |e, n| e.child(n))
    }

    /// The trimmed text at `path`; None if absent or empty.
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        let t = self.at(path)?.text.trim();
        (!t.is_empty()).then_some(t)
    }

    /// The `item` children of the list element at `path` (EC2's lists).
    pub fn items<'a>(&'a self, path: &[&str]) -> impl Iterator<Item = &'a Element> {
        self.at(path)
            .into_iter()
            .flat_map(|l| l.children_named("item"))
    }
}

fn err(reason: impl Into<String>) -> Error {
    Error::Xml(reason.into())
}

/// The tree under construction: open elements, the finished root.
#[derive(Default)]
struct Builder {
    stack: Vec<Element>,
    root: Option<Element>,
    elements: usize,
}

impl Builder {
    fn open(&mut self, name: &str) -> Result<(), Error> {
        if self.root.is_some() {
            return Err(err("content after the root element"));
        }
        self.elements += 1;
        if self.stack.len() >= MAX_DEPTH || self.elements > MAX_ELEMENTS {
            return Err(err(format!(
                "over {MAX_DEPTH} levels or {MAX_ELEMENTS} elements"
            )));
        }
        self.stack.push(Element {
            name: name.to_owned(),
            ..Element::default()
        });
        Ok(())
    }

    /// Ends the innermost element (`name`: its end tag's, if any).
    fn close(&mut self, name: Option<&str>) -> Result<(), Error> {
        let done = self
            .stack
            .pop()
            .ok_or_else(|| err("an end tag without a start"))?;
        if let Some(n) = name.filter(|n| *n != done.name) {
            return Err(err(format!("unexpected </{n}>")));
        }
        match self.stack.last_mut() {
            Some(parent) => parent.children.push(done),
            None => self.root = Some(done),
        }
        Ok(())
    }

    fn text(&mut self, text: &str, what: &str) -> Result<(), Error> {
        match self.stack.last_mut() {
            Some(e) => e.text.push_str(text),
            None if text.trim().is_empty() => {}
            None => return Err(err(format!("{what} outside the root element"))),
        }
        Ok(())
    }
}

/// Parses a whole document into its root element.
pub fn parse(doc: &str) -> Result<Element, Error> {
    let mut b = Builder::default();
    for token in Tokenizer::from(doc) {
        match token.map_err(|e| err(e.to_string()))? {
            Token::ElementStart { local, .. } => b.open(local.as_str())?,
            Token::ElementEnd { end, .. } => match end {
                ElementEnd::Open => {}
                ElementEnd::Empty => b.close(None)?,
                ElementEnd::Close(_, local) => b.close(Some(local.as_str()))?,
            },
            Token::Text { text } => b.text(&decode(text.as_str())?, "text")?,
            Token::Cdata { text, .. } => b.text(text.as_str(), "CDATA")?,
            Token::DtdStart { .. } | Token::EmptyDtd { .. } | Token::EntityDeclaration { .. } => {
                return Err(err("a DTD (AWS replies have none)"));
            }
            _ => {}
        }
    }
    if !b.stack.is_empty() {
        return Err(err("the document ends inside an element"));
    }
    b.root.ok_or_else(|| err("no root element"))
}

/// Decodes `&lt; &gt; &amp; &quot; &apos;` and `&#N;` / `&#xH;`.
pub fn decode(s: &str) -> Result<String, Error> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let end = tail
            .find(';')
            .ok_or_else(|| err("an unterminated entity"))?;
        let name = &tail[..end];
        let c = match name {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(h) = name.strip_prefix("#x") {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = name.strip_prefix('#') {
                    d.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| err(format!("unknown entity &{name};")))?
            }
        };
        out.push(c);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_with_prefixes_dropped_and_text_decoded() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<r:Response xmlns:r="urn:x"><a>1 &lt; 2 &amp;&#x41;&#66;</a><b/><a><![CDATA[<raw>]]></a>
<!-- c --></r:Response>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "Response");
        let names: Vec<&str> = root.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "a"]);
        assert_eq!(root.text_at(&["a"]), Some("1 < 2 &AB"));
        assert_eq!(root.children[2].text, "<raw>");
        assert_eq!(root.text_at(&["b"]), None);
        assert_eq!(root.children_named("a").count(), 2);
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "text<a/>",
            "<a>&bogus;</a>",
            "<a>&amp</a>",
            "<a>&#xD800;</a>",
            "<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>",
            "<a><b></a></b>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn depth_and_element_count_are_bounded() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).is_err());
        let ok = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
        let wide = format!("<r>{}</r>", "<i/>".repeat(MAX_ELEMENTS));
        assert!(parse(&wide).is_err(), "root + MAX_ELEMENTS children");
    }
}
