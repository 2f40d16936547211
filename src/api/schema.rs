//! Adjustments to the generated OpenAPI schema so that a real API server accepts it silently.

use schemars::Schema;
use schemars::transform::transform_subschemas;

/// String formats a Kubernetes API server validates in CRD schemas (`supportedFormats` in
/// k8s.io/apiextensions-apiserver `pkg/apiserver/validation/formats.go`), compared the way the
/// API server compares them: with `-` removed (so `date-time` is `datetime`).
pub const RECOGNIZED_STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
];

/// Number formats of OpenAPI itself, which the API server knows too.
pub const RECOGNIZED_NUMBER_FORMATS: &[&str] = &["int32", "int64", "float", "double"];

/// Whether a real API server recognises `format` (anything else makes `kubectl apply` print
/// `Warning: unrecognized format "..."`).
pub fn is_recognized_format(format: &str) -> bool {
    RECOGNIZED_NUMBER_FORMATS.contains(&format)
        || RECOGNIZED_STRING_FORMATS.contains(&format.replace('-', "").as_str())
}

/// Everything the generated schema needs before it goes into the CRD, applied to `spec` and
/// `status`: recognised formats only, and descriptions that `kubectl explain` can wrap.
pub fn for_api_server(schema: &mut Schema) {
    keep_recognized_formats(schema);
    reflow_descriptions(schema);
}

/// Doc comments are wrapped at 100 columns in the source; `kubectl explain` wraps again and
/// would leave ragged lines. Single line breaks become spaces; blank lines (paragraphs) stay.
pub fn reflow_descriptions(schema: &mut Schema) {
    if let Some(object) = schema.as_object_mut()
        && let Some(description) = object.get("description").and_then(|d| d.as_str())
    {
        let reflowed = description
            .split("\n\n")
            .map(|paragraph| {
                paragraph
                    .split('\n')
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        object.insert("description".to_string(), reflowed.into());
    }
    transform_subschemas(&mut reflow_descriptions, schema);
}

/// Drops every `format` the API server does not recognise, here and in all subschemas. Rust's
/// unsigned integers become `uint8`/`uint32`; their `minimum`/`maximum` stay, and they carry
/// the range.
pub fn keep_recognized_formats(schema: &mut Schema) {
    if let Some(object) = schema.as_object_mut()
        && let Some(format) = object.get("format").and_then(|f| f.as_str())
        && !is_recognized_format(format)
    {
        object.remove("format");
    }
    transform_subschemas(&mut keep_recognized_formats, schema);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_formats_go_and_ranges_stay() {
        let mut schema: Schema = serde_json::from_value(serde_json::json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer", "format": "uint8", "minimum": 1, "maximum": 99},
                "b": {"type": "string", "format": "date-time"},
                "c": {"type": "integer", "format": "int64"},
            }
        }))
        .unwrap();
        keep_recognized_formats(&mut schema);
        let value = serde_json::to_value(&schema).unwrap();
        let a = &value["properties"]["a"];
        assert!(a.get("format").is_none());
        assert_eq!(a["minimum"], 1);
        assert_eq!(a["maximum"], 99);
        assert_eq!(value["properties"]["b"]["format"], "date-time");
        assert_eq!(value["properties"]["c"]["format"], "int64");
    }

    #[test]
    fn descriptions_keep_paragraphs_only() {
        let mut schema: Schema = serde_json::from_value(serde_json::json!({
            "description": "One line\nwrapped.\n\nSecond paragraph.",
            "type": "string",
        }))
        .unwrap();
        reflow_descriptions(&mut schema);
        assert_eq!(
            serde_json::to_value(&schema).unwrap()["description"],
            "One line wrapped.\n\nSecond paragraph."
        );
    }
}
