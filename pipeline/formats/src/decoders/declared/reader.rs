//! The streaming reader of one declared JSON payload: serde seeds that walk the object and
//! check each member against the declaration as it is read, into a reused [`Row`].

use super::*;

/// Where in a payload the reader is.
#[derive(Debug, Default)]
pub(super) enum At {
    #[default]
    Event,
    Field(usize),
    /// A member object, by its number.
    Object(usize),
}

/// One payload's state while it is read, reused from payload to payload.
#[derive(Debug, Default)]
pub(super) struct Row {
    pub(super) found: Vec<Found>,
    pub(super) values: Vec<Option<Value>>,
    /// Which member objects were read (one given twice is refused).
    pub(super) objects_seen: Vec<bool>,
    /// The first problem met while reading, in document order.
    pub(super) first: Option<(RejectKind, String)>,
    /// The member being read, for a number serde refuses.
    pub(super) at: At,
}

impl Row {
    pub(super) fn reset(&mut self, fields: usize, objects: usize) {
        self.found.clear();
        self.found.resize(fields, Found::Absent);
        self.values.clear();
        self.values.resize(fields, None);
        self.objects_seen.clear();
        self.objects_seen.resize(objects, false);
        self.first = None;
        self.at = At::Event;
    }

    pub(super) fn problem(&mut self, kind: RejectKind, reason: String) {
        if self.first.is_none() {
            self.first = Some((kind, reason));
        }
    }
}

/// The event's own object's number.
pub(super) const ROOT: usize = 0;

/// Reads one object of the declaration: the event, or a member object (which may be `null`).
pub(super) struct ObjectSeed<'a> {
    pub(super) node: &'a Node,
    pub(super) decoder: &'a DeclaredJsonDecoder,
    pub(super) row: &'a mut Row,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object (or null for a member object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ObjectSeed { node, decoder, row } = self;
        row.objects_seen[node.id] = true;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let path = || match node.path.as_str() {
                "" => super::super::shown_name(&key),
                p => super::super::shown_name(&format!("{p}.{key}")),
            };
            match node.members.get(key.as_ref()) {
                Some(Member::Leaf(i)) => {
                    row.at = At::Field(*i);
                    let found = map.next_value_seed(LeafSeed)?;
                    if row.found[*i] != Found::Absent {
                        row.problem(RejectKind::Schema, format!("duplicate field {}", path()));
                    }
                    row.found[*i] = found;
                }
                Some(Member::Object(child)) => {
                    if row.objects_seen[child.id] {
                        row.problem(RejectKind::Schema, format!("duplicate field {}", path()));
                    }
                    row.at = At::Object(child.id);
                    map.next_value_seed(ObjectSeed {
                        node: child,
                        decoder,
                        row: &mut *row,
                    })?;
                }
                None => {
                    if !decoder.declared.ignore_unknown {
                        row.problem(RejectKind::Schema, format!("unknown field {}", path()));
                    }
                    // Skipping a value never fails on its numbers: no path is needed.
                    row.at = At::Object(node.id);
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.wrong(seq_ignored(seq))
    }
    /// A member object given as `null`: every field below it is null (the event itself cannot be).
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.node.id == ROOT {
            return self.wrong(Ok(()));
        }
        let ObjectSeed { node, row, .. } = self;
        row.objects_seen[node.id] = true;
        for &i in &node.leaves {
            if row.found[i] == Found::Absent {
                row.found[i] = Found::Null;
            }
        }
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.wrong(Ok(()))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.wrong(Ok(()))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.wrong(Ok(()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.wrong(Ok(()))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.wrong(Ok(()))
    }
}

impl ObjectSeed<'_> {
    /// Something other than an object (or null) where the declaration has one.
    fn wrong<E>(self, consumed: Result<(), E>) -> Result<(), E> {
        consumed?;
        let at = match self.node.path.as_str() {
            "" => "the event".to_string(),
            p => format!("field {p}"),
        };
        self.row.problem(
            RejectKind::Schema,
            format!("{at}: wrong type, expected an object"),
        );
        Ok(())
    }
}

pub(super) fn seq_ignored<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A member name, borrowed from the payload where it has no escapes.
pub(super) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Whatever a payload holds where a field is declared; its type is judged after reading.
pub(super) struct LeafSeed;

impl<'de> DeserializeSeed<'de> for LeafSeed {
    type Value = Found;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LeafSeed {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Found, E> {
        Ok(Found::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Found, E> {
        Ok(Found::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Found, E> {
        Ok(Found::UInt(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Found, E> {
        Ok(Found::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Found, E> {
        Ok(Found::Text(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Found, E> {
        Ok(Found::Text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Found, A::Error> {
        seq_ignored(seq).map(|()| Found::Compound)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Found::Compound)
    }
}
