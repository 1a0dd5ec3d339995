//! Strict JSON reading for untrusted documents (token headers and payloads, key sets).
//!
//! `serde_json::Value` silently keeps the last of two equal member names; a token whose payload
//! says `"sub":"alice", ..., "sub":"admin"` must not be read one way here and another way by the
//! upstream, so duplicated member names are refused at every depth.

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Why a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not UTF-8, not JSON, or a member name given twice.
    Invalid,
    /// Valid JSON, but not an object.
    NotObject,
}

/// Parses `bytes` as a JSON object, refusing duplicated member names at any depth.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        Ok(_) => Err(JsonError::NotObject),
        Err(_) => Err(JsonError::Invalid),
    }
}

/// The members of a record this module wrote itself (the key-set and token records VMs share),
/// read leniently: a record that does not parse, or a member missing or of another type, reads as
/// zero or empty, as if it had never been set.
pub struct Fields(Map<String, Value>);

impl Fields {
    pub fn parse(bytes: &[u8]) -> Fields {
        Fields(parse_object(bytes).unwrap_or_default())
    }

    pub fn u64(&self, name: &str) -> u64 {
        self.0.get(name).and_then(Value::as_u64).unwrap_or(0)
    }

    /// A count, saturating at `u32::MAX`.
    pub fn u32(&self, name: &str) -> u32 {
        u32::try_from(self.u64(name)).unwrap_or(u32::MAX)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    /// A string member, empty when absent.
    pub fn string(&self, name: &str) -> String {
        self.str(name).unwrap_or("").to_string()
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Strict, E> {
        Number::from_f64(v)
            .map(|n| Strict(Value::Number(n)))
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element::<Strict>()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Strict, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let Strict(value) = access.next_value::<Strict>()?;
            if map.insert(key, value).is_some() {
                return Err(A::Error::custom("duplicate member name"));
            }
        }
        Ok(Strict(Value::Object(map)))
    }
}

/// The path (member names, and `[i]` for array elements) to the first value nested `depth`
/// levels deep in the JSON text `bytes`, read without building the document: for naming the
/// field of a document too deep for the parser. `None` if nothing is that deep.
pub fn path_at_depth(bytes: &[u8], depth: usize) -> Option<Vec<String>> {
    // One frame per open object or array: the member name or element index inside it.
    let mut frames: Vec<(bool, String, usize)> = Vec::new();
    let mut key = String::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let (text, end) = string_at(bytes, i)?;
                // A string right after `{` or `,` inside an object is a member name.
                if matches!(frames.last(), Some((true, k, _)) if k.is_empty()) {
                    key = text;
                }
                i = end;
                continue;
            }
            b':' => {
                if let Some((true, k, _)) = frames.last_mut() {
                    *k = std::mem::take(&mut key);
                }
            }
            b',' => match frames.last_mut() {
                Some((true, k, _)) => k.clear(),
                Some((false, _, n)) => *n += 1,
                None => {}
            },
            open @ (b'{' | b'[') => {
                frames.push((open == b'{', String::new(), 0));
                if frames.len() > depth {
                    return Some(steps(&frames[..frames.len() - 1]));
                }
            }
            b'}' | b']' => {
                frames.pop();
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The steps of a path through `frames`.
fn steps(frames: &[(bool, String, usize)]) -> Vec<String> {
    frames
        .iter()
        .map(|(object, key, n)| {
            if *object {
                key.clone()
            } else {
                format!("[{n}]")
            }
        })
        .collect()
}

/// The JSON string opening at `start` (its raw text, escapes kept) and the index past it.
fn string_at(bytes: &[u8], start: usize) -> Option<(String, usize)> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => {
                let text = String::from_utf8_lossy(&bytes[start + 1..i]).into_owned();
                return Some((text, i + 1));
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_objects() {
        let map = parse_object(br#"{"a":1,"b":[true,null,"x",1.5],"c":{"d":-2}}"#).unwrap();
        assert_eq!(map["a"], 1);
        assert_eq!(map["b"][3], 1.5);
        assert_eq!(map["c"]["d"], -2);
    }

    #[test]
    fn refuses_duplicates_at_any_depth() {
        assert_eq!(parse_object(br#"{"a":1,"a":2}"#), Err(JsonError::Invalid));
        assert_eq!(
            parse_object(br#"{"a":{"b":1,"b":1}}"#),
            Err(JsonError::Invalid)
        );
        assert_eq!(
            parse_object(br#"{"a":[{"b":1,"b":1}]}"#),
            Err(JsonError::Invalid)
        );
    }

    #[test]
    fn refuses_non_objects_and_garbage() {
        assert_eq!(parse_object(b"[1]"), Err(JsonError::NotObject));
        assert_eq!(parse_object(b"\"x\""), Err(JsonError::NotObject));
        assert_eq!(parse_object(b"{"), Err(JsonError::Invalid));
        assert_eq!(parse_object(b"{} x"), Err(JsonError::Invalid));
        assert_eq!(parse_object(b"{\"a\":\"\xff\"}"), Err(JsonError::Invalid));
        // Deep nesting hits serde_json's recursion limit: an error, not a stack overflow.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_object(deep.as_bytes()), Err(JsonError::Invalid));
    }

    #[test]
    fn paths_to_deep_values() {
        let text = br#"{"a": "x,[{", "rules": [{"m": 1}, {"requires": {"requires_any": {"requirements": [[1]]}}}]}"#;
        assert_eq!(
            path_at_depth(text, 5),
            Some(
                ["rules", "[1]", "requires", "requires_any", "requirements"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(
            path_at_depth(text, 6),
            Some(
                [
                    "rules",
                    "[1]",
                    "requires",
                    "requires_any",
                    "requirements",
                    "[0]"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert_eq!(path_at_depth(text, 7), None);
        assert_eq!(
            path_at_depth(br#"{"k\"{": [[[]]]}"#, 3),
            Some(vec![
                "k\\\"{".to_string(),
                "[0]".to_string(),
                "[0]".to_string()
            ])
        );
    }

    #[test]
    fn huge_numbers_become_floats() {
        let map = parse_object(br#"{"exp":1e400}"#);
        assert_eq!(map, Err(JsonError::Invalid));
        let map = parse_object(br#"{"exp":123456789012345678901234567890}"#).unwrap();
        assert!(map["exp"].is_f64());
    }
}
