"""The built site in a real browser, with the network blocked: every page loads without console
errors, images load, math is rendered by the local MathJax, internal links resolve, the
sidebar lists every chapter, search works; screenshots for a human look.
"""

import json
import re
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest
import yaml

from conftest import ROOT, SCREENSHOTS, SITE

REDIRECT = re.compile(r'http-equiv="refresh" content="0; url=([^"]+)"', re.IGNORECASE)

MATHJAX_READY = """async () => {
    if (!document.querySelector('.math')) return 'no math';
    for (let i = 0; i < 100 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
        await new Promise(r => setTimeout(r, 50));
    if (!(window.MathJax && MathJax.startup)) return 'MathJax did not load';
    await MathJax.startup.promise;
    return 'rendered';
}"""

PAGE_FACTS = """async () => {
    const images = await Promise.all([...document.images].map(async img => {
        img.loading = 'eager';
        try { await img.decode(); } catch (e) {}
        return {src: img.getAttribute('src'), width: img.naturalWidth};
    }));
    const math = [...document.querySelectorAll('.math')];
    return {
        images: images,
        math: math.length,
        math_unrendered: math.filter(m => !m.querySelector('mjx-container'))
                             .map(m => m.textContent.slice(0, 60)),
        mjx: document.querySelectorAll('mjx-container').length,
        links: [...document.querySelectorAll('a[href]')].map(a => a.href),
        sidebar: [...document.querySelectorAll('.bd-sidebar-primary a')].map(a => a.href),
    };
}"""


def site_pages():
    """Every HTML page of the site (not the static assets or the copied sources)."""
    skip = ("_static", "_sources", "_images", "jupyter_execute", "_panels_static")
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
                  if not p.relative_to(SITE).parts[0] in skip)


@pytest.fixture(scope="session")
def crawl(server, browser):
    """Open every page once with all non-local requests blocked; return what each page showed."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    blocked = []

    def only_local(route):
        if route.request.url.startswith(server):
            return route.continue_()
        blocked.append(route.request.url)
        return route.abort()

    context.route("**/*", only_local)
    results = {}
    for page_path in site_pages():
        redirect = REDIRECT.search((SITE / page_path).read_text(encoding="utf-8"))
        if redirect:  # index.html: nothing to render, but its target must exist
            target = f"{server}/{Path(page_path).parent.as_posix()}/{redirect.group(1)}"
            results[page_path] = {"images": [], "math": 0, "math_unrendered": [], "mjx": 0,
                                  "links": [target.replace('/./', '/')], "sidebar": [],
                                  "errors": [], "mathjax": "no math", "url": target}
            continue
        page = context.new_page()
        errors = []
        page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc, e=errors: e.append(str(exc)))
        page.goto(f"{server}/{page_path}", wait_until="load")
        mathjax = page.evaluate(MATHJAX_READY)
        facts = page.evaluate(PAGE_FACTS)
        results[page_path] = {**facts, "errors": errors, "mathjax": mathjax, "url": page.url}
        page.close()
    context.close()
    summary = {"pages": len(results),
               "images": sum(len(r["images"]) for r in results.values()),
               "links": sum(len(r["links"]) for r in results.values()),
               "math_elements": sum(r["math"] for r in results.values()),
               "blocked_requests": blocked}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "site_check.json").write_text(json.dumps(summary, indent=1))
    return results, blocked, server


def test_every_page_loads_without_console_errors(crawl):
    results, _, _ = crawl
    assert len(results) >= 4
    failing = {p: r["errors"] for p, r in results.items() if r["errors"]}
    assert not failing, failing


def test_the_site_makes_no_request_outside_itself(crawl):
    _, blocked, _ = crawl
    assert not blocked, f"pages asked for external resources (offline readers lose them): {blocked}"


def test_every_image_loads(crawl):
    results, _, _ = crawl
    broken = {p: [i["src"] for i in r["images"] if i["width"] == 0] for p, r in results.items()}
    broken = {p: srcs for p, srcs in broken.items() if srcs}
    assert not broken, broken
    chapter_images = sum(len(r["images"]) for p, r in results.items() if p.startswith("book/"))
    assert chapter_images > 0


def test_math_is_rendered_by_the_local_mathjax(crawl):
    results, _, _ = crawl
    with_math = {p: r for p, r in results.items() if r["math"]}
    assert with_math, "no page has math: the check would prove nothing"
    for page, r in with_math.items():
        assert r["mathjax"] == "rendered", (page, r["mathjax"])
        assert r["mjx"] > 0 and not r["math_unrendered"], (page, r["math_unrendered"][:3])


def _anchors(html_file):
    return set(re.findall(r'\bid="([^"]+)"', html_file.read_text(encoding="utf-8")))


def test_every_internal_link_resolves(crawl):
    results, _, server = crawl
    problems, anchors = [], {}
    for page, r in results.items():
        for link in r["links"]:
            if not link.startswith(server):
                continue
            target, fragment = urldefrag(link)
            path = unquote(urlparse(target).path).lstrip("/")
            file = SITE / (path or "index.html")
            if file.is_dir():
                file = file / "index.html"
            if not file.exists():
                problems.append(f"{page}: {link} (no file)")
            elif fragment and file.suffix == ".html":
                if file not in anchors:
                    anchors[file] = _anchors(file)
                if unquote(fragment) not in anchors[file]:
                    problems.append(f"{page}: {link} (no anchor)")
    assert not problems, problems


def _toc_files(node):
    for key in ("root", "file"):
        if key in node:
            yield node[key]
    for child in node.get("parts", []) + node.get("chapters", []) + node.get("sections", []):
        yield from _toc_files(child)


def test_the_sidebar_lists_every_chapter(crawl):
    results, _, server = crawl
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    root = toc["root"]
    chapters = [f for f in _toc_files(toc) if f != root]
    page = results[f"{root}.html"]
    listed = {unquote(urlparse(urldefrag(h)[0]).path).lstrip("/") for h in page["sidebar"]}
    missing = [c for c in chapters if f"{Path(c).with_suffix('')}.html" not in listed]
    assert chapters and not missing, missing


def test_search_finds_a_word_of_the_book(server, browser):
    page = browser.new_page()
    page.goto(f"{server}/search.html?q=variance", wait_until="load")
    page.wait_for_selector("#search-results ul.search li", timeout=20_000)
    hits = page.locator("#search-results ul.search li").count()
    page.close()
    assert hits >= 1


@pytest.mark.parametrize("width", [1280, 390])
def test_screenshots_of_the_intro_and_a_chapter(server, browser, width):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": width, "height": 900})
    for name in ("book/intro", "book/transform"):
        page.goto(f"{server}/{name}.html", wait_until="load")
        page.evaluate(MATHJAX_READY)
        out = SCREENSHOTS / f"{Path(name).name}-{width}.png"
        page.screenshot(path=str(out), full_page=False)
        assert out.stat().st_size > 10_000
    page.close()
