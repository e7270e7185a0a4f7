//! Objects from manifest files, as `kubectl get svc,endpointslices,nodes,servicecidrs -A
//! -o yaml` prints them: for `render`, `apply` and tests, which then go through the same
//! [`ModelBuilder`](crate::builder::ModelBuilder) as the daemon.
//!
//! A path is a file (YAML or JSON, `-` for stdin) or a directory, whose `*.yaml`, `*.yml`
//! and `*.json` files are read in name order (not recursively, like `kubectl -f`). A file
//! may hold many YAML documents; a document may be one object or a `List` of them. Kinds
//! the proxy does not consume are skipped.

use std::io::Read;
use std::path::{Path, PathBuf};

use k8s_openapi::serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::{Kind, Object, SourceEvent};

/// Why manifests could not be loaded. Document and item numbers count from 1.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no *.yaml, *.yml or *.json files in this directory", path.display())]
    EmptyDirectory { path: PathBuf },
    /// The document is not YAML/JSON, or not an object with a `kind`.
    #[error("{}: document {document}: {message}", path.display())]
    Document {
        path: PathBuf,
        document: usize,
        message: String,
    },
    /// An object of a kind the proxy consumes does not match its schema.
    #[error("{}: document {document}{}: {kind} {name}: {message}", path.display(), item.map(|i| format!(", item {i}")).unwrap_or_default())]
    Object {
        path: PathBuf,
        document: usize,
        item: Option<usize>,
        kind: String,
        name: String,
        message: String,
    },
}

/// Loads every Service, EndpointSlice, Node and ServiceCIDR from `paths`, in order.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for path in paths {
        for file in expand(path)? {
            load_file(&file, &mut objects)?;
        }
    }
    Ok(objects)
}

/// The events that make a builder hold exactly `objects`: one `Listed` per kind, even
/// when empty (so that the builder counts as synced), Node facts first so that entries
/// are categorized once.
pub fn listed_events(objects: Vec<Object>) -> Vec<SourceEvent> {
    let kinds = [
        Kind::Node,
        Kind::ServiceCidr,
        Kind::Service,
        Kind::EndpointSlice,
    ];
    let mut by_kind: [Vec<Object>; 4] = Default::default();
    for obj in objects {
        let i = match obj.kind() {
            Kind::Node => 0,
            Kind::ServiceCidr => 1,
            Kind::Service => 2,
            Kind::EndpointSlice => 3,
        };
        by_kind[i].push(obj);
    }
    kinds
        .into_iter()
        .zip(by_kind)
        .map(|(kind, objs)| SourceEvent::Listed(kind, objs))
        .collect()
}

/// The files a path stands for.
fn expand(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io_err = |source| ManifestError::Io {
        path: path.to_owned(),
        source,
    };
    if path.as_os_str() == "-" || !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let file = entry.map_err(io_err)?.path();
        let is_manifest = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if is_manifest && file.is_file() {
            files.push(file);
        }
    }
    if files.is_empty() {
        return Err(ManifestError::EmptyDirectory {
            path: path.to_owned(),
        });
    }
    files.sort();
    Ok(files)
}

fn load_file(path: &Path, out: &mut Vec<Object>) -> Result<(), ManifestError> {
    let text = read_text(path).map_err(|source| ManifestError::Io {
        path: path.to_owned(),
        source,
    })?;
    let docs: Box<dyn Iterator<Item = Result<Value, String>>> =
        if path.extension().is_some_and(|e| e == "json") {
            Box::new(json_documents(&text))
        } else {
            Box::new(yaml_documents(&text))
        };
    let doc_err = |document, message| ManifestError::Document {
        path: path.to_owned(),
        document,
        message,
    };
    for (i, doc) in docs.enumerate() {
        let document = i + 1;
        match doc.map_err(|e| doc_err(document, e))? {
            Value::Null => {}
            Value::Object(map) => collect(path, document, Value::Object(map), out)?,
            _ => return Err(doc_err(document, "not an object".into())),
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
    }
}

/// The documents of a YAML file, lazily: after a syntax error the parser cannot find the
/// next document and repeats the error forever, so callers stop at the first one.
fn yaml_documents(text: &str) -> impl Iterator<Item = Result<Value, String>> + '_ {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(|e| e.to_string()))
}

/// JSON is parsed with a JSON parser (YAML parsers trip over tab indentation); a file may
/// hold several concatenated values, as `kubectl get -o json` of several calls would.
fn json_documents(text: &str) -> impl Iterator<Item = Result<Value, String>> + '_ {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| v.map_err(|e| e.to_string()))
}

/// Adds the object in `doc`, or the items of a `List`, to `out`.
fn collect(
    path: &Path,
    document: usize,
    doc: Value,
    out: &mut Vec<Object>,
) -> Result<(), ManifestError> {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind.is_empty() {
        let message = "missing \"kind\"".into();
        return Err(ManifestError::Document {
            path: path.to_owned(),
            document,
            message,
        });
    }
    if !kind.ends_with("List") {
        return push_object(path, document, None, doc, out);
    }
    let items = match doc {
        Value::Object(mut map) => map.remove("items").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    match items {
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                push_object(path, document, Some(i + 1), item, out)?;
            }
            Ok(())
        }
        Value::Null => Ok(()),
        _ => Err(ManifestError::Document {
            path: path.to_owned(),
            document,
            message: format!("{kind}: items is not a list"),
        }),
    }
}

fn push_object(
    path: &Path,
    document: usize,
    item: Option<usize>,
    mut value: Value,
    out: &mut Vec<Object>,
) -> Result<(), ManifestError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = object_name(&value);
    let err = |message: String| ManifestError::Object {
        path: path.to_owned(),
        document,
        item,
        kind: if kind.is_empty() {
            "object".into()
        } else {
            kind.clone()
        },
        name: name.clone(),
        message,
    };
    let object = match kind.as_str() {
        "Service" => Object::Service(parse(value).map_err(err)?),
        "EndpointSlice" => Object::EndpointSlice(parse(value).map_err(err)?),
        "Node" => Object::Node(parse(value).map_err(err)?),
        "ServiceCIDR" => {
            // v1beta1 (Kubernetes 1.31-1.32) has the same schema as v1.
            if value.get("apiVersion").and_then(Value::as_str) == Some("networking.k8s.io/v1beta1")
            {
                value["apiVersion"] = "networking.k8s.io/v1".into();
            }
            Object::ServiceCidr(parse(value).map_err(err)?)
        }
        "" => return Err(err("missing \"kind\"".into())),
        other => {
            tracing::debug!(path = %path.display(), document, kind = other, name = %name, "skipping object of unused kind");
            return Ok(());
        }
    };
    out.push(object);
    Ok(())
}

/// Deserializes an object; errors name the offending field (`spec.ports[0].port: ...`).
fn parse<T: DeserializeOwned>(value: Value) -> Result<Box<T>, String> {
    serde_path_to_error::deserialize(value)
        .map(Box::new)
        .map_err(|e| {
            let path = e.path().to_string();
            match path.as_str() {
                "." => e.into_inner().to_string(),
                _ => format!("{path}: {}", e.into_inner()),
            }
        })
}

/// `namespace/name` as far as the document says.
fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    let field = |f| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => "<unnamed>".to_owned(),
    }
}
