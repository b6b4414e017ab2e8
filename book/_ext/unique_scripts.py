"""Sphinx extension: render each <script> of a page once.

sphinx-thebe 0.3.1 (pulled in by Jupyter Book 1) adds its inline configuration with
``app.add_js_file`` after the builder is initialised; Sphinx 7 then emits it twice, and the
second ``const THEBE_JS_URL = ...`` throws "Identifier 'THEBE_JS_URL' has already been
declared" in the browser on every page. Dropping exact duplicates fixes it.
"""


def _key(script):
    """Filename (None and "" both mean an inline script) and attributes (the body too)."""
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", None) or {}
    return filename, tuple(sorted((k, str(v)) for k, v in attributes.items()))


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    # Late priority: after every other handler has added its scripts.
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
