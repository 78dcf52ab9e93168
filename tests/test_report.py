"""`lostreg report`: the HTML page of eval runs, checked as text and rendered in headless Chromium.

The runs are real `lostreg eval` runs (pixels backbone) on a small synthetic VOC set, with
protocols chosen so that the runs hit different images in both directions.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import synthetic
from helpers import eval_pixels, preds_by_id
from lostreg.cli.main import main
from lostreg.report import ReportError, ReportRun, build_report, load_report_runs
from lostreg.report.html import run_label

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: Run label -> extra eval overrides. Seed 6 of the simple scene makes A and B differ both ways.
PROTOCOLS = {"A": [], "B": ["lost.k_patches=1"], "C": ["max_size=80"]}
N_IMAGES = 12
THUMB = 320


# ------------------------------------------------------------------------------ helpers


class Node:
    """An element of the parsed page."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text_parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.text_parts) + "".join(child.text for child in self.children)

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        return [n for n in self.iter() if n.tag == tag and (cls is None or cls in n.attrs.get("class", "").split())]

    def by_id(self, element_id: str) -> Node:
        found = [n for n in self.iter() if n.attrs.get("id") == element_id]
        assert len(found) == 1, f"id {element_id!r} found {len(found)} times"
        return found[0]


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictTreeBuilder(HTMLParser):
    """Builds a tree and fails on what a validator would flag here: unclosed or stray end tags,
    duplicate attributes, duplicate ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.current = self.root
        self.ids: set[str] = set()
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = [name for name, _ in attrs]
        assert len(names) == len(set(names)), f"duplicate attribute in <{tag}>: {names}"
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            assert values["id"] not in self.ids, f"duplicate id {values['id']!r}"
            self.ids.add(values["id"])
        node = Node(tag, values, self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in _VOID, f"self-closing <{tag}/> is not valid HTML"
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        assert tag not in _VOID, f"end tag for void element </{tag}>"
        assert self.current.tag == tag, f"</{tag}> closes <{self.current.tag}>"
        assert self.current.parent is not None
        self.current = self.current.parent

    def handle_data(self, data: str) -> None:
        self.current.text_parts.append(data)


def parse_page(text: str) -> Node:
    builder = StrictTreeBuilder()
    builder.feed(text)
    builder.close()
    assert builder.current is builder.root, f"unclosed <{builder.current.tag}>"
    assert builder.doctype is not None and builder.doctype.lower() == "doctype html"
    [page] = builder.root.children
    assert page.tag == "html" and page.attrs.get("lang")
    return page


def expected_hits(runs: dict[str, Path], image_id: str) -> str:
    return ",".join("1" if preds_by_id(d)[image_id]["hit"] else "0" for d in runs.values())


def hit_by_missed_by(runs: dict[str, Path], a: str, b: str) -> set[str]:
    """Ids hit by run ``a`` and missed by run ``b``, from preds.jsonl."""
    pa, pb = preds_by_id(runs[a]), preds_by_id(runs[b])
    return {i for i in pa if pa[i]["hit"] and not pb[i]["hit"]}


@pytest.fixture(scope="module")
def runs(voc_simple12: synthetic.SyntheticVoc, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    assert len(voc_simple12.images) == N_IMAGES
    base = tmp_path_factory.mktemp("report_runs")
    out = {label: eval_pixels(voc_simple12.root, base / f"run_{label}", *extra)
           for label, extra in PROTOCOLS.items()}
    # The premise of the filter tests: each of A and B hits an image the other misses.
    assert hit_by_missed_by(out, "A", "B") and hit_by_missed_by(out, "B", "A")
    return out


@pytest.fixture(scope="module")
def report_page(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", *map(str, runs.values()), "--output", str(output), "--no-progress"]) == 0
    return output


@pytest.fixture(scope="module")
def linked_page(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("linked") / "my report.html"
    assert main(["report", *map(str, runs.values()), "-o", str(output), "--no-progress", "--link-images"]) == 0
    return output


# ------------------------------------------------------------------------------ the page as text


def test_table_shows_each_runs_corloc(runs: dict[str, Path], report_page: Path) -> None:
    page = parse_page(report_page.read_text())
    table = page.by_id("corloc-table")
    rows = {}
    for tr in table.find_all("tr")[1:]:
        cells = [td.text.strip() for td in tr.find_all("td")]
        if cells[0]:  # a row of ours starts with its run label
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(runs)
    header = [th.text for th in table.find_all("th")]
    # The compare table's columns (method first: LOST and TokenCut runs share one table), after "run".
    assert header[:5] == ["run", "method", "backbone", "protocol", "VOC07 ours"]
    for label, run_dir in runs.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert rows[label][4] == f"{metrics['corloc']:.2f}"
        assert rows[label][1:3] == ["LOST", "pixels"]
    assert rows["A"][3] == "default" and rows["B"][3] == "k=1" and rows["C"][3] == "max_size=80"


def test_lost_and_tokencut_runs_share_the_table(runs: dict[str, Path], voc_simple12: synthetic.SyntheticVoc,
                                                tmp_path: Path) -> None:
    """A TokenCut run beside a LOST run: each named by its method in the table, the legend and the title."""
    cut = eval_pixels(voc_simple12.root, tmp_path / "cut", "method=tokencut")
    report = build_report(load_report_runs([runs["A"], cut]))
    page = parse_page(report.html)
    rows = {}
    for tr in page.by_id("corloc-table").find_all("tr")[1:]:
        cells = [td.text.strip() for td in tr.find_all("td")]
        if cells[0]:
            rows[cells[0]] = cells
    assert rows["A"][1:4] == ["LOST", "pixels", "default"]
    assert rows["B"][1:4] == ["TokenCut", "pixels", "default"]
    metrics = json.loads((cut / "metrics.json").read_text())
    assert rows["B"][4] == f"{metrics['corloc']:.2f}"
    legend = page.find_all("ul", "legend")[0].text
    assert "LOST pixels [default]" in legend and "TokenCut pixels [default]" in legend
    assert "TokenCut pixels [default]" in page.find_all("title")[0].text
    # The gallery's boxes are the TokenCut run's own.
    items = {item.attrs["data-id"]: item for item in page.by_id("gallery").find_all("figure", "item")}
    preds = preds_by_id(cut)
    assert set(items) == set(preds)
    assert all(item.attrs["data-hits"].split(",")[1] == ("1" if preds[i]["hit"] else "0") for i, item in items.items())


def test_gallery_has_one_item_per_image_with_hits_from_preds(runs: dict[str, Path], report_page: Path) -> None:
    page = parse_page(report_page.read_text())
    items = page.by_id("gallery").find_all("figure", "item")
    preds_a = preds_by_id(runs["A"])
    assert sorted(item.attrs["data-id"] for item in items) == sorted(preds_a)
    assert len(items) == N_IMAGES
    for item in items:
        image_id = item.attrs["data-id"]
        hits = expected_hits(runs, image_id)
        assert item.attrs["data-hits"] == hits, image_id
        assert item.attrs["data-disagree"] == ("1" if len(set(hits.split(","))) > 1 else "0")
        assert item.attrs["data-errors"] == "0,0,0"
        assert item.find_all("span", "iid")[0].text == image_id
    # Disagreements lead the gallery.
    flags = [item.attrs["data-disagree"] for item in items]
    assert flags == sorted(flags, reverse=True) and flags[0] == "1"
    assert page.by_id("summary").text.startswith(f"Showing {N_IMAGES} of {N_IMAGES} images")


def test_thumbnails_are_embedded_jpegs_with_nothing_external(report_page: Path) -> None:
    text = report_page.read_text()
    page = parse_page(text)
    images = page.find_all("img")
    assert len(images) == N_IMAGES
    for img in images:
        prefix = "data:image/jpeg;base64,"
        assert img.attrs["src"].startswith(prefix)
        thumb = Image.open(io.BytesIO(base64.b64decode(img.attrs["src"][len(prefix):])))
        assert thumb.format == "JPEG"
        assert (thumb.width, thumb.height) == (int(img.attrs["width"]), int(img.attrs["height"]))
        # The longer side is THUMB plus the margin that keeps rings of border boxes visible.
        assert THUMB < max(thumb.size) <= THUMB + 2 * 12
    for node in page.iter():
        for name in ("src", "href"):
            value = node.attrs.get(name, "")
            assert not value.startswith(("http:", "https:", "//")), f"external resource {value!r}"
    assert "<script src" not in text and "@import" not in text


def test_quick_buttons_count_each_ordered_pair(runs: dict[str, Path], report_page: Path) -> None:
    page = parse_page(report_page.read_text())
    buttons = {b.text.rsplit(" (", 1)[0]: b for b in page.find_all("button", "quick")}
    labels = list(runs)
    for a in labels:
        for b in labels:
            if a != b:
                button = buttons[f"hit by {a}, missed by {b}"]
                assert button.text.endswith(f"({len(hit_by_missed_by(runs, a, b))})")
                assert (button.attrs["data-hit"], button.attrs["data-miss"]) == (str(labels.index(a)),
                                                                                 str(labels.index(b)))
    assert buttons["all"].text == f"all ({N_IMAGES})"
    assert "disagreements" in buttons


def test_ids_and_paths_are_escaped(runs: dict[str, Path], tmp_path: Path) -> None:
    nasty_id = "x<img src=y onerror=alert(1)>&\"'"
    copies = {}
    for label in ("A", "B"):
        copy = shutil.copytree(runs[label], tmp_path / f"run <{label}> & \"q\"")
        lines = [json.loads(line) for line in (copy / "preds.jsonl").read_text().splitlines()]
        lines[0]["image_id"] = nasty_id
        (copy / "preds.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        copies[label] = copy
    text = build_report(load_report_runs(copies.values())).html
    assert nasty_id not in text and "<img src=y" not in text
    assert html.escape(nasty_id) in text
    assert html.escape(str(copies["A"])) in text and str(copies["A"]) not in text
    page = parse_page(text)
    [item] = [i for i in page.find_all("figure", "item") if i.attrs["data-id"] == nasty_id]
    assert item.find_all("span", "iid")[0].text == nasty_id
    assert len(page.find_all("img")) == N_IMAGES, "no element smuggled in through the id"


def test_max_images_keeps_disagreements(runs: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_report_runs([runs["A"], runs["B"]])
    report = build_report(loaded, max_images=2)
    page = parse_page(report.html)
    items = page.find_all("figure", "item")
    assert len(items) == 2 and (report.shown, report.total) == (2, N_IMAGES)
    assert all(item.attrs["data-disagree"] == "1" for item in items)
    assert page.by_id("summary").text.startswith(f"Showing 2 of {N_IMAGES} images")
    assert len(parse_page(build_report(loaded, max_images=0).html).find_all("figure", "item")) == N_IMAGES


def test_link_images_writes_files_beside_the_page(linked_page: Path) -> None:
    page = parse_page(linked_page.read_text())
    images = page.find_all("img")
    assert len(images) == N_IMAGES
    folder = linked_page.parent / "my report_files"
    assert len(list(folder.glob("*.jpg"))) == N_IMAGES
    for img in images:
        src = img.attrs["src"]
        assert src.startswith("my%20report_files/"), src
        assert (linked_page.parent / src.replace("%20", " ")).is_file()


def test_failed_images_get_an_error_badge(voc4: synthetic.SyntheticVoc, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    voc = voc4.copy_to(tmp_path / "voc")  # a copy to damage
    images = voc.images
    images[1].path.write_bytes(images[1].path.read_bytes()[:200])  # truncated JPEG: LOST fails on it
    a = eval_pixels(voc.root, tmp_path / "a")
    b = eval_pixels(voc.root, tmp_path / "b", "lost.k_patches=1")
    output = tmp_path / "report.html"
    capsys.readouterr()
    assert main(["report", str(a), str(b), "-o", str(output), "--no-progress"]) == 0
    assert "1 image(s) shown without picture" in capsys.readouterr().err
    page = parse_page(output.read_text())
    [bad] = [i for i in page.find_all("figure", "item") if i.attrs["data-id"] == images[1].image_id]
    assert bad.attrs["data-errors"] == "1,1" and bad.attrs["data-hits"] == "0,0"
    badges = bad.find_all("span", "badge")
    assert [badge.text for badge in badges] == ["error", "error"]
    error = preds_by_id(a)[images[1].image_id]["error"]
    assert bad.find_all("span", "error")[0].attrs["title"] == error
    assert "image unavailable" in bad.find_all("div", "noimg")[0].text
    assert "errors (1)" in [b.text for b in page.find_all("button", "quick")]


# ------------------------------------------------------------------------------ refusals


def test_runs_on_different_datasets_are_refused(runs: dict[str, Path], voc12_set: synthetic.SyntheticVoc,
                                                voc_simple12: synthetic.SyntheticVoc, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    voc12 = eval_pixels(voc12_set.root, tmp_path / "voc12_run", dataset="voc12")
    output = tmp_path / "report.html"
    capsys.readouterr()
    assert main(["report", str(runs["A"]), str(voc12), "-o", str(output), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lostreg: error: runs on different datasets") and err.count("\n") == 1
    assert "voc07" in err and "voc12" in err
    assert not output.exists()

    # Same dataset name, other ground truth (difficult objects dropped): also another dataset.
    no_hard = eval_pixels(voc_simple12.root, tmp_path / "no_hard", "dataset.no_hard=true")
    with pytest.raises(ReportError, match="different datasets.*no_hard=True"):
        load_report_runs([runs["A"], no_hard])


def test_a_data_check_setting_does_not_make_another_dataset(runs: dict[str, Path]) -> None:
    # dataset.expected_count is read by `lostreg data check` only; runs written before it existed lack it.
    a, b = load_report_runs([runs["A"], runs["B"]])
    older = ReportRun(a.summary, a.preds, {k: v for k, v in a.dataset_config.items() if k != "expected_count"})
    counted = ReportRun(b.summary, b.preds, {**b.dataset_config, "expected_count": N_IMAGES})
    build_report([older, counted])  # not refused as runs on different datasets


def test_runs_sharing_no_image_are_refused(runs: dict[str, Path]) -> None:
    a, b = load_report_runs([runs["A"], runs["B"]])
    elsewhere = ReportRun(b.summary, {f"other_{i}": p for i, p in b.preds.items()}, b.dataset_config)
    with pytest.raises(ReportError, match="share no image id"):
        build_report([a, elsewhere])


def test_preds_are_read_without_touching_the_file(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs["A"], run_dir)
    preds = run_dir / "preds.jsonl"
    # A run still writing: its last line is partial. The report skips it and leaves the file as it is.
    with preds.open("a") as f:
        f.write('{"image_id": "cut sh')
    before = preds.read_bytes()
    [run] = load_report_runs([run_dir])
    assert run.preds == preds_by_id(runs["A"])
    assert run.dataset_config["name"] == "voc07" and run.dataset_config["root"]
    assert preds.read_bytes() == before

    preds.write_bytes(before.rsplit(b"\n", 1)[0] + b"\nnot json\n")
    with pytest.raises(ReportError, match=rf"preds.jsonl:{N_IMAGES + 1}: corrupt prediction line"):
        load_report_runs([run_dir])
    preds.write_bytes(before.rsplit(b"\n", 1)[0] + b'\n{"image": "x.jpg"}\n')
    with pytest.raises(ReportError, match="corrupt prediction line"):
        load_report_runs([run_dir])


def test_run_labels() -> None:
    assert [run_label(i) for i in (0, 1, 25, 26, 27, 701, 702)] == ["A", "B", "Z", "AA", "AB", "ZZ", "AAA"]


def test_missing_or_incomplete_run_dir_is_an_error(runs: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "report.html"
    missing = tmp_path / "nope"
    assert main(["report", str(runs["A"]), str(missing), "-o", str(output), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"lostreg: error: {missing}: not a run directory (no such directory)\n"
    assert not output.exists()

    no_preds = shutil.copytree(runs["A"], tmp_path / "no_preds")
    (no_preds / "preds.jsonl").unlink()
    assert main(["report", str(no_preds), "-o", str(output), "--no-progress"]) == 2
    assert "no preds.jsonl" in capsys.readouterr().err
    assert not output.exists()


# ------------------------------------------------------------------------------ headless Chromium


def _browser_paths() -> tuple[str, str]:
    """``(chromium, chromedriver)``, or skip, saying how to install them."""
    browser = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                    if p and Path(p).exists()), None)
    driver = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver")) if p and Path(p).exists()), None)
    if browser is None or driver is None:
        pytest.skip("Chromium not installed: apt-get install chromium chromium-driver")
    return browser, driver


@pytest.fixture()
def chromium(tmp_path: Path) -> Iterator[Any]:
    browser, driver_path = _browser_paths()
    # selenium is a dev dependency: its absence is a broken setup, not a reason to skip.
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1300,1700"):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _visible_ids(driver: Any) -> set[str]:
    from selenium.webdriver.common.by import By

    items = driver.find_elements(By.CSS_SELECTOR, "#gallery .item")
    return {item.get_attribute("data-id") for item in items if item.is_displayed()}


def _wait_for_first_image(driver: Any) -> None:
    """Wait until the first thumbnail is decoded (lazy images may load after the load event)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    first = driver.find_element(By.CSS_SELECTOR, "#gallery img")
    script = "return arguments[0].complete ? arguments[0].naturalWidth : 0"
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(script, first) > THUMB,
                                    f"thumbnail {first.get_attribute('src')[:60]!r} did not load")


def _severe(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_report_renders_and_filters_in_headless_chromium(
    chromium: Any, runs: dict[str, Path], report_page: Path, linked_page: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = chromium
    driver.get(report_page.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    assert _severe(driver) == []

    table = driver.find_element(By.ID, "corloc-table")
    assert table.is_displayed()
    for run_dir in runs.values():
        assert f"{json.loads((run_dir / 'metrics.json').read_text())['corloc']:.2f}" in table.text
    _wait_for_first_image(driver)

    count = driver.find_element(By.ID, "shown-count")
    assert _visible_ids(driver) == set(preds_by_id(runs["A"]))
    assert count.text == f"{N_IMAGES} of {N_IMAGES} images shown"

    for a, b in (("A", "B"), ("B", "A"), ("B", "C")):
        expected = hit_by_missed_by(runs, a, b)
        button = driver.find_element(By.XPATH, f"//button[starts-with(normalize-space(.), 'hit by {a}, missed by {b}')]")
        button.click()
        assert button.get_attribute("aria-pressed") == "true"
        assert _visible_ids(driver) == expected, f"hit by {a}, missed by {b}"
        assert count.text == f"{len(expected)} of {N_IMAGES} images shown"
        assert driver.find_element(By.ID, "empty").is_displayed() == (not expected)

    # The selects alone: everything run C missed.
    driver.find_element(By.XPATH, "//button[starts-with(normalize-space(.), 'all')]").click()
    Select(driver.find_element(By.ID, "missed-by")).select_by_value("2")
    missed_by_c = {i for i, p in preds_by_id(runs["C"]).items() if not p["hit"]}
    assert _visible_ids(driver) == missed_by_c
    driver.find_element(By.XPATH, "//button[starts-with(normalize-space(.), 'hit by A, missed by B')]").click()
    driver.save_screenshot(str(tmp_path / "report.png"))  # for a human look; not kept
    assert _severe(driver) == []

    # Linked thumbnails load from the folder beside the page.
    driver.get(linked_page.as_uri())
    _wait_for_first_image(driver)
    assert _severe(driver) == []


def test_failure_text_wraps_inside_its_card_in_headless_chromium(chromium: Any, tmp_path: Path) -> None:
    # A path without any space to break at, as real dataset paths often are.
    root = tmp_path / ("a_long_folder_name_without_any_space_" * 5) / "voc"
    images = synthetic.write_voc_dataset(root, n_images=3, seed=7)
    images[1].path.write_bytes(images[1].path.read_bytes()[:200])  # truncated: discovery fails, no thumbnail
    a = eval_pixels(root, tmp_path / "a")
    b = eval_pixels(root, tmp_path / "b", "lost.k_patches=1")
    output = tmp_path / "report.html"
    assert main(["report", str(a), str(b), "-o", str(output), "--no-progress"]) == 0

    chromium.get(output.as_uri())
    assert _severe(chromium) == []
    # For every element of the failed image's card: its box inside the card's, its content
    # (the text) inside its box. Overflowing text leaves the box's size alone but grows
    # scrollWidth / scrollHeight past clientWidth / clientHeight.
    boxes = chromium.execute_script("""
        var card = document.querySelector('#gallery .item[data-id="' + arguments[0] + '"]');
        var c = card.getBoundingClientRect();
        return Array.prototype.map.call(card.querySelectorAll('*'), function (el) {
          var r = el.getBoundingClientRect();
          return {el: el.tagName + '.' + el.className, left: r.left - c.left, right: c.right - r.right,
                  scrollWidth: el.scrollWidth, clientWidth: el.clientWidth,
                  scrollHeight: el.scrollHeight, clientHeight: el.clientHeight,
                  text: el.textContent.slice(0, 40)};
        });""", images[1].image_id)
    noimg = [box for box in boxes if box["el"] == "DIV.noimg"]
    assert len(noimg) == 1 and noimg[0]["text"].startswith("image unavailable: ")
    assert str(images[1].path) in chromium.find_element("css selector", ".noimg").text.replace("\n", "")
    for box in boxes:
        assert box["left"] >= 0 and box["right"] >= -0.5, f"{box['el']} sticks out of its card: {box}"
        if box["clientWidth"]:  # inline elements have no client box
            assert box["scrollWidth"] <= box["clientWidth"], f"{box['el']} text overflows its width: {box}"
            assert box["scrollHeight"] <= box["clientHeight"], f"{box['el']} text overflows its height: {box}"
