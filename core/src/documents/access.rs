//! Private helpers to read typed values out of an Automerge document, turning every
//! missing value or wrong type into [`DocError::Malformed`] with its path.

use std::str::FromStr;

use automerge::{ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value, ValueRef};

use super::DocError;
use crate::ids::Timestamp;

/// An object in a document together with its path, for error messages.
pub(crate) struct Obj<'a, R: ReadDoc + ?Sized> {
    doc: &'a R,
    /// The object's id, to write into it.
    pub(crate) id: ObjId,
    /// The object's path from the root, e.g. `notes/2026-11.abc`.
    pub(crate) path: String,
    /// Every field of this map, when read at once ([`Obj::read_all`]).
    fields: Option<Vec<(String, Value<'static>, ObjId)>>,
}

impl<'a, R: ReadDoc + ?Sized> Obj<'a, R> {
    /// The root map of `doc`.
    pub(crate) fn root(doc: &'a R) -> Self {
        Obj { doc, id: ROOT, path: String::new(), fields: None }
    }

    /// This map with every field read at once: reading several fields of an object
    /// this way costs one pass over it instead of one lookup in the document each (a
    /// lookup costs microseconds in a document of thousands of notes).
    pub(crate) fn read_all(&self) -> Self {
        let fields = self
            .doc
            .map_range(&self.id, ..)
            .map(|item| {
                let id = item.id();
                (item.key.into_owned(), Value::from(item.value), id)
            })
            .collect();
        Obj { doc: self.doc, id: self.id.clone(), path: self.path.clone(), fields: Some(fields) }
    }

    /// The value at `key`, from the fields read at once if they were.
    fn get(&self, key: &str) -> Result<Option<(Value<'a>, ObjId)>, DocError> {
        match &self.fields {
            Some(fields) => Ok(fields
                .iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, value, id)| (value.clone(), id.clone()))),
            None => Ok(self.doc.get(&self.id, key)?),
        }
    }

    /// The path of `key` inside this object.
    pub(crate) fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}/{key}", self.path) }
    }

    /// The map at `key`.
    pub(crate) fn map(&self, key: &str) -> Result<Self, DocError> {
        self.object(key, ObjType::Map)
    }

    /// The list at `key`.
    pub(crate) fn list(&self, key: &str) -> Result<Self, DocError> {
        self.object(key, ObjType::List)
    }

    /// The contents of the text object at `key`.
    pub(crate) fn text(&self, key: &str) -> Result<String, DocError> {
        let text = self.object(key, ObjType::Text)?;
        Ok(self.doc.text(&text.id)?)
    }

    /// The id of the text object at `key`, to edit it.
    pub(crate) fn text_id(&self, key: &str) -> Result<ObjId, DocError> {
        Ok(self.object(key, ObjType::Text)?.id)
    }

    /// The map at `key`, or `None` when nothing is there.
    pub(crate) fn opt_map(&self, key: &str) -> Result<Option<Self>, DocError> {
        match self.get(key)? {
            None => Ok(None),
            Some(_) => self.map(key).map(Some),
        }
    }

    /// The required string at `key`.
    pub(crate) fn str(&self, key: &str) -> Result<String, DocError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key, "a string"))
    }

    /// The string at `key`, or `None` when it is absent or null.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<String>, DocError> {
        self.opt_scalar(key, "a string", |s| match s {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        })
    }

    /// The required timestamp (milliseconds) at `key`.
    pub(crate) fn time(&self, key: &str) -> Result<Timestamp, DocError> {
        self.opt_time(key)?.ok_or_else(|| self.missing(key, "a timestamp"))
    }

    /// The timestamp (milliseconds) at `key`, or `None` when absent or null.
    pub(crate) fn opt_time(&self, key: &str) -> Result<Option<Timestamp>, DocError> {
        self.opt_scalar(key, "a timestamp", |s| match s {
            ScalarValue::Timestamp(ms) | ScalarValue::Int(ms) => Some(Timestamp(*ms)),
            _ => None,
        })
    }

    /// The required unsigned integer at `key`.
    pub(crate) fn uint(&self, key: &str) -> Result<u64, DocError> {
        let found = self.opt_scalar(key, "an unsigned integer", |s| match s {
            ScalarValue::Uint(n) => Some(*n),
            ScalarValue::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        })?;
        found.ok_or_else(|| self.missing(key, "an unsigned integer"))
    }

    /// The required `u32` at `key`.
    pub(crate) fn u32(&self, key: &str) -> Result<u32, DocError> {
        u32::try_from(self.uint(key)?)
            .map_err(|_| DocError::malformed(self.path_of(key), "the number is too large"))
    }

    /// The required boolean at `key`.
    pub(crate) fn bool(&self, key: &str) -> Result<bool, DocError> {
        let found = self.opt_scalar(key, "a boolean", |s| match s {
            ScalarValue::Boolean(b) => Some(*b),
            _ => None,
        })?;
        found.ok_or_else(|| self.missing(key, "a boolean"))
    }

    /// The required 32-byte hash at `key`.
    pub(crate) fn hash(&self, key: &str) -> Result<[u8; 32], DocError> {
        let found = self.opt_scalar(key, "32 bytes", |s| match s {
            ScalarValue::Bytes(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        })?;
        found.ok_or_else(|| self.missing(key, "32 bytes"))
    }

    /// The required string at `key`, parsed (ids, enums).
    pub(crate) fn parse<T: FromStr>(&self, key: &str) -> Result<T, DocError> {
        let text = self.str(key)?;
        text.parse().map_err(|_| {
            let shown: String = text.chars().take(80).collect();
            DocError::malformed(self.path_of(key), format!("`{shown}` is not a valid value here"))
        })
    }

    /// Every entry of this map whose value must be a map, with its key, in one pass.
    pub(crate) fn entries(&self) -> Result<Vec<(String, Self)>, DocError> {
        let found: Vec<(String, bool, ObjId)> = self
            .doc
            .map_range(&self.id, ..)
            .map(|item| {
                let id = item.id();
                (item.key.into_owned(), matches!(item.value, ValueRef::Object(ObjType::Map)), id)
            })
            .collect();
        found.into_iter().map(|(key, is_map, id)| self.child(key, is_map, id)).collect()
    }

    /// Every element of this list, each of which must be a map, in one pass.
    pub(crate) fn items(&self) -> Result<Vec<Self>, DocError> {
        if self.doc.length(&self.id) == 0 {
            return Ok(Vec::new());
        }
        let found: Vec<(bool, ObjId)> = self
            .doc
            .list_range(&self.id, ..)
            .map(|item| (matches!(item.value, ValueRef::Object(ObjType::Map)), item.id()))
            .collect();
        found
            .into_iter()
            .enumerate()
            .map(|(index, (is_map, id))| Ok(self.child(index.to_string(), is_map, id)?.1))
            .collect()
    }

    /// An entry or element that must be a map.
    fn child(&self, key: String, is_map: bool, id: ObjId) -> Result<(String, Self), DocError> {
        let path = self.path_of(&key);
        if !is_map {
            return Err(DocError::malformed(path, "expected a map"));
        }
        Ok((key, Obj { doc: self.doc, id, path, fields: None }))
    }

    fn object(&self, key: &str, expected: ObjType) -> Result<Self, DocError> {
        let path = self.path_of(key);
        match self.get(key)? {
            Some((Value::Object(found), id)) if found == expected => {
                Ok(Obj { doc: self.doc, id, path, fields: None })
            }
            Some(_) => Err(DocError::malformed(path, format!("expected a {}", kind(expected)))),
            None => Err(DocError::malformed(path, format!("a {} is missing", kind(expected)))),
        }
    }

    fn opt_scalar<T>(
        &self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&ScalarValue) -> Option<T>,
    ) -> Result<Option<T>, DocError> {
        match self.get(key)? {
            None => Ok(None),
            Some((Value::Scalar(s), _)) if s.is_null() => Ok(None),
            Some((Value::Scalar(s), _)) => convert(&s).map(Some).ok_or_else(|| {
                DocError::malformed(self.path_of(key), format!("expected {expected}"))
            }),
            Some((Value::Object(_), _)) => {
                Err(DocError::malformed(self.path_of(key), format!("expected {expected}")))
            }
        }
    }

    fn missing(&self, key: &str, expected: &str) -> DocError {
        DocError::malformed(self.path_of(key), format!("{expected} is missing"))
    }
}

fn kind(obj: ObjType) -> &'static str {
    match obj {
        ObjType::Map | ObjType::Table => "map",
        ObjType::List => "list",
        ObjType::Text => "text",
    }
}
