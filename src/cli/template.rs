//! `--format go-template`: a Go text/template applied to the value `--format json` prints, with
//! the sprig functions oras registers that scripts use (`toJson`, `toPrettyJson`, `toRawJson`,
//! `upper`, `lower`, `default`, `join`, ...) and Docker's `json`. The engine is the
//! lithos-gotmpl crates (why: docs/DESIGN.md, "Go templates").

use lithos_gotmpl_engine::{analyze::FunctionSource, FunctionRegistry, Template as Engine};
use oras_fs::{Error, Result};
use serde_json::Value;

/// A parsed template whose functions all exist: a typo fails before the command does its work.
pub struct Template {
    engine: Engine,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self> {
        let engine = Engine::parse_with_functions("format", source, functions())
            .map_err(|e| usage(source, &e.to_string()))?;
        if let Some(f) = engine
            .analyze()
            .functions
            .into_iter()
            .find(|f| f.source == FunctionSource::Unknown)
        {
            return Err(usage(source, &format!("unknown function {:?}", f.name)));
        }
        Ok(Template { engine })
    }

    /// Renders the template over `value`. Object keys are visited in sorted order, as Go's
    /// `range` and `json.Marshal` do for the maps oras hands its templates.
    pub fn render(&self, value: &Value) -> Result<String> {
        self.engine
            .render(&sorted(value))
            .map_err(|e| Error::Usage(format!("the --template failed: {e}")))
    }
}

fn usage(source: &str, problem: &str) -> Error {
    // The engine's one gap users meet (docs/DESIGN.md): say how to write it instead.
    let hint = if problem.contains("else-if") {
        "; write {{else}}{{if ...}}...{{end}} instead of {{else if ...}}"
    } else {
        " (Go text/template syntax, e.g. '{{.digest}}')"
    };
    Error::Usage(format!("bad --template {source:?}: {problem}{hint}"))
}

fn functions() -> FunctionRegistry {
    let mut b = FunctionRegistry::builder();
    lithos_gotmpl_core::install_text_template_functions(&mut b);
    lithos_sprig::install_sprig_functions(&mut b);
    // Docker's `{{json .}}`, which people carry over from `docker inspect`.
    b.register("json", |_, args| match args {
        [v] => Ok(Value::String(v.to_string())),
        _ => Err(lithos_gotmpl_engine::Error::render(
            "json takes one argument",
            None,
        )),
    });
    b.build()
}

/// A copy of `value` whose objects have their keys in sorted order.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        v => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v).unwrap()
    }

    fn pulled() -> Value {
        json!({
            "reference": "localhost:5000/a@sha256:1",
            "files": [
                {"path": "/out/b.txt", "digest": "sha256:b", "size": 2,
                 "annotations": {"z": "1", "org.opencontainers.image.title": "b.txt"}},
                {"path": "/out/dir/", "digest": "sha256:c", "size": 3}
            ]
        })
    }

    #[test]
    fn what_oras_users_write() {
        let v = pulled();
        assert_eq!(render("{{.reference}}", &v), "localhost:5000/a@sha256:1");
        assert_eq!(
            render("{{range .files}}{{.path}}{{\"\\n\"}}{{end}}", &v),
            "/out/b.txt\n/out/dir/\n"
        );
        assert_eq!(
            render("{{range .files}}{{if .annotations}}{{index .annotations \"org.opencontainers.image.title\"}}{{else}}-{{end}} {{end}}", &v),
            "b.txt - "
        );
        assert_eq!(render("{{len .files}}", &v), "2");
        assert_eq!(
            render("{{ .reference | upper }}", &v),
            "LOCALHOST:5000/A@SHA256:1"
        );
        assert_eq!(render("{{- .missing | default \"none\" -}}", &v), "none");
        assert_eq!(
            render(
                "{{range $i, $f := .files}}{{$i}}={{$f.digest}} {{$.reference}};{{end}}",
                &v
            ),
            "0=sha256:b localhost:5000/a@sha256:1;1=sha256:c localhost:5000/a@sha256:1;"
        );
    }

    #[test]
    fn json_functions_sort_keys_as_go_does() {
        let v = json!({"b": 1, "a": {"y": true, "x": null}});
        let compact = r#"{"a":{"x":null,"y":true},"b":1}"#;
        assert_eq!(render("{{toJson .}}", &v), compact);
        assert_eq!(render("{{json .}}", &v), compact);
        assert_eq!(render("{{toRawJson .}}", &v), compact);
        assert_eq!(
            render("{{toPrettyJson .a}}", &v),
            "{\n  \"x\": null,\n  \"y\": true\n}"
        );
        assert_eq!(render("{{range $k, $v := .}}{{$k}}{{end}}", &v), "ab");
    }

    #[test]
    fn the_else_if_workaround_renders() {
        let t = "{{if eq .n 1}}one{{else}}{{if eq .n 2}}two{{else}}many{{end}}{{end}}";
        assert_eq!(render(t, &json!({"n": 2})), "two");
        assert_eq!(render(t, &json!({"n": 3})), "many");
    }

    #[test]
    fn mistakes_are_usage_errors_before_any_work() {
        for bad in [
            "{{.digest",
            "{{nosuchfunc .}}",
            "{{if .a}}x",
            "{{if .a}}a{{else if .b}}b{{end}}",
        ] {
            match Template::parse(bad) {
                Err(Error::Usage(m)) => {
                    assert!(m.contains("--template"), "{m}");
                    assert!(
                        !bad.contains("else if") || m.contains("{{else}}{{if"),
                        "{m}"
                    );
                }
                Err(e) => panic!("{bad}: {e}"),
                Ok(_) => panic!("{bad} parsed"),
            }
        }
    }
}
