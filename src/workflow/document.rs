//! Reading documents that come from outside (templates, personas, API bodies) with
//! bounded cost: YAML or JSON text becomes a JSON value under a size budget that also
//! counts what YAML aliases expand to (an anchored string aliased thousands of times is
//! refused, not expanded), then the value becomes the typed definition with the path
//! of any error, and an array given where an object is declared is refused (serde
//! would otherwise read a struct from a list of its fields, in order).

use serde::Serialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Number, Value};
use std::cell::Cell;
use std::fmt;

/// What one parsed document may expand to: bytes of text plus a fixed cost per node.
/// A 1 MiB body of plain YAML or JSON stays well inside it.
pub const MAX_EXPANDED_BYTES: usize = 4 * 1024 * 1024;
const NODE_COST: usize = 64;

/// Parse YAML (or JSON, which YAML accepts) or, with `json`, strict JSON into a value,
/// refusing documents that expand beyond [`MAX_EXPANDED_BYTES`].
///
/// # Errors
/// A message with the line and column where the parser has them.
pub fn parse_value(text: &str, json: bool) -> Result<Value, String> {
    let budget = Cell::new(MAX_EXPANDED_BYTES);
    if json {
        let mut de = serde_json::Deserializer::from_str(text);
        let v = BoundedValue(&budget)
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        Ok(v)
    } else {
        BoundedValue(&budget)
            .deserialize(serde_yaml_ng::Deserializer::from_str(text))
            .map_err(|e| e.to_string())
    }
}

/// Why a value is not the definition: where (a path like `phases[0].role`; none for
/// the document as a whole) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{p}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<ShapeError> for String {
    fn from(e: ShapeError) -> Self {
        e.to_string()
    }
}

/// A typed definition from a value: errors name the path (`phases[0].role`), and an
/// array where the definition declares an object is refused.
///
/// # Errors
/// [`ShapeError`] naming the path.
pub fn from_value<T: DeserializeOwned + Serialize>(value: Value) -> Result<T, ShapeError> {
    let typed: T = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        ShapeError {
            path: (path != ".").then_some(path),
            message: e.inner().to_string(),
        }
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| ShapeError {
        path: None,
        message: e.to_string(),
    })?;
    check_shape(&value, &back, "")?;
    Ok(typed)
}

/// `given` must have an object wherever `parsed` (the typed value written back) has one.
fn check_shape(given: &Value, parsed: &Value, path: &str) -> Result<(), ShapeError> {
    match (given, parsed) {
        (Value::Object(g), Value::Object(p)) => {
            for (k, pv) in p {
                if let Some(gv) = g.get(k) {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    check_shape(gv, pv, &child)?;
                }
            }
            Ok(())
        }
        (Value::Array(g), Value::Array(p)) => {
            for (i, (gv, pv)) in g.iter().zip(p).enumerate() {
                check_shape(gv, pv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Array(_), Value::Object(_)) => Err(ShapeError {
            path: (!path.is_empty()).then(|| path.to_owned()),
            message: "expected an object, got an array".into(),
        }),
        _ => Ok(()),
    }
}

fn charge<E: de::Error>(budget: &Cell<usize>, cost: usize) -> Result<(), E> {
    let left = budget.get();
    if cost > left {
        return Err(E::custom(format!(
            "the document expands to more than {} MiB (YAML aliases are counted as what they expand to)",
            MAX_EXPANDED_BYTES / (1024 * 1024)
        )));
    }
    budget.set(left - cost);
    Ok(())
}

/// Builds a [`Value`] while charging every node and every byte of text to the budget
/// before allocating it.
struct BoundedValue<'b>(&'b Cell<usize>);

impl<'de> DeserializeSeed<'de> for BoundedValue<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BoundedValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        charge(self.0, NODE_COST)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        charge(self.0, NODE_COST)?;
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        charge(self.0, NODE_COST)?;
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        charge(self.0, NODE_COST)?;
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        charge(self.0, NODE_COST + v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        charge(self.0, NODE_COST)?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        charge(self.0, NODE_COST)?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(BoundedValue(self.0))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        charge(self.0, NODE_COST)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(BoundedKey(self.0))? {
            let value = map.next_value_seed(BoundedValue(self.0))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// A map key: text, or a scalar written as text (YAML allows `1: x`).
struct BoundedKey<'b>(&'b Cell<usize>);

impl<'de> DeserializeSeed<'de> for BoundedKey<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BoundedKey<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        charge(self.0, NODE_COST + v.len())?;
        Ok(v.to_owned())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Budget {
        usd: Option<f64>,
        tokens: Option<i64>,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
        budget: Option<Budget>,
        items: Vec<Budget>,
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let mut yaml = format!("name: &a \"{}\"\nitems:\n", "x".repeat(100_000));
        for _ in 0..1000 {
            yaml.push_str("  - { usd: 1 }\n");
        }
        yaml.push_str("budget: { usd: 1 }\nextra: [");
        yaml.push_str(&vec!["*a"; 1000].join(", "));
        yaml.push(']');
        let err = parse_value(&yaml, false).unwrap_err();
        assert!(err.contains("expands to more than"), "{err}");
        // Aliases that expand modestly are fine.
        let ok = parse_value("a: &x [1, 2]\nb: *x\n", false).unwrap();
        assert_eq!(ok["b"], serde_json::json!([1, 2]));
    }

    #[test]
    fn arrays_where_objects_are_declared_are_refused_with_their_path() {
        let v = parse_value(r#"{"name": "n", "budget": [0.5, 1000], "items": []}"#, true).unwrap();
        let err = from_value::<Body>(v).unwrap_err().to_string();
        assert_eq!(err, "budget: expected an object, got an array");
        let v = parse_value("name: n\nitems: [[1, 2]]\n", false).unwrap();
        assert_eq!(
            from_value::<Body>(v).unwrap_err().to_string(),
            "items[0]: expected an object, got an array"
        );
        let v = parse_value("name: n\nitems: [{usd: 1, colour: red}]\n", false).unwrap();
        let err = from_value::<Body>(v).unwrap_err().to_string();
        assert!(
            err.starts_with("items[0].colour: unknown field `colour`"),
            "{err}"
        );
        let v = parse_value("name: n\nitems: [{usd: 1}]\nbudget: {tokens: 5}\n", false).unwrap();
        assert_eq!(
            from_value::<Body>(v).unwrap().budget.unwrap().tokens,
            Some(5)
        );
    }
}
