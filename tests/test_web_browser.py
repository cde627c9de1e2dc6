"""The page in a real browser: Debian's Chromium driven by Playwright against `heatsvc web` in its own
process, itself a client of the real service (tests/test_service.py's Stack). Pixel checks read the
heat canvas back; panel checks compare with GetZones for the same view. Skipped only when
/usr/bin/chromium is absent (`.ci/run` installs it)."""
from __future__ import annotations

import os
import time

import pytest

from heatsvc.v1 import heatmap_service_pb2 as pb
from test_web import TOKEN, Gateway, web_replay, web_stack  # noqa: F401  (fixtures)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def gw(web_stack):  # noqa: F811
    g = Gateway(web_stack.target)
    yield g
    g.close()


class Page:
    """A page with its console errors collected; waits poll page.evaluate (the page's CSP forbids
    the eval that Playwright's wait_for_function uses, and the tests keep the CSP on)."""

    def __init__(self, browser, url):
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1300, "height": 760})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)

    def js(self, expr):
        return self.page.evaluate(expr)

    def wait(self, expr, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}; console errors: {self.errors}")

    def settle(self):
        """Wait until the newest frame is drawn (two animation frames after it arrived)."""
        self.js("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def heat(self) -> dict:
        """Pixel statistics of the heat canvas: painted pixels and a digest of their colours."""
        return self.js("""() => {
            const c = document.getElementById('heat');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let painted = 0, sum = 0, yellow = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] === 0) continue;
                painted++; sum = (sum + d[i] * 7 + d[i + 1] * 13 + d[i + 2] * 17 + i) % 1000000007;
                if (d[i] > 200 && d[i + 1] > 200 && d[i + 2] < 100) yellow++;
            }
            return {painted, sum, yellow, total: d.length / 4};
        }""")

    def frames(self) -> int:
        return self.js("heatsvc.state.frames")

    def change(self, action):
        """Do `action`, then wait for the next frame of the new state and for it to be drawn."""
        before = self.frames()
        action()
        self.wait(f"heatsvc.state.frames > {before}")
        time.sleep(0.2)
        self.settle()

    def panel(self, side: str) -> list[dict]:
        return self.js(f"""() => Array.from(document.querySelectorAll('#{side} tr')).map(tr => ({{
            low: Number(tr.dataset.low), high: Number(tr.dataset.high), notional: Number(tr.dataset.notional)}}))""")


@pytest.fixture()
def page(browser, gw):
    p = Page(browser, gw.url + "/")
    p.wait("window.heatsvc && heatsvc.state.frames > 0")
    p.settle()
    yield p
    p.page.close()


def zones_of(stack, market, lookback, threshold):
    return stack.stub.GetZones(pb.GetZonesRequest(view=pb.View(market=market, lookback=lookback),
                                                  zone_options=pb.ZoneOptions(threshold=threshold))).zones


def assert_panel_matches(p: Page, stack):
    s = p.js("({market: heatsvc.state.market, lookback: heatsvc.state.lookback, threshold: heatsvc.state.threshold})")
    p.wait(f"heatsvc.state.zones && heatsvc.state.zones.market === '{s['market']}' && "
           f"heatsvc.state.zones.lookback === '{s['lookback']}' && "
           f"Math.abs(heatsvc.state.zones.threshold - {s['threshold']}) < 1e-9")
    want = zones_of(stack, s["market"], s["lookback"], s["threshold"])
    for side, zones in (("above", want.above), ("below", want.below)):
        got = p.panel(side)
        assert [z["notional"] for z in got] == pytest.approx([z.notional for z in zones], rel=1e-9), side
        assert [z["low"] for z in got] == pytest.approx([z.price_low for z in zones], rel=1e-12), side
    assert p.js("document.getElementById('skew').dataset.label") in ("up", "down", "balanced")


def test_page_loads_clean_and_draws_heat(page, web_stack):  # noqa: F811
    heat = page.heat()
    assert heat["painted"] > 0.05 * heat["total"], heat           # heat covers a real part of the chart
    assert heat["yellow"] > 0, heat                               # the hottest cells are yellow
    assert page.js("document.getElementById('conn').dataset.state") == "live"
    assert page.js("document.querySelectorAll('#market option').length") == len(
        web_stack.stub.ListMarkets(pb.ListMarketsRequest()).markets)
    assert page.js("document.querySelectorAll('#lookbacks button').length") == 2
    assert "estimate" in page.js("document.querySelector('.notice').textContent").lower()
    assert "TradingView" in page.js("document.querySelector('footer').textContent")
    assert_panel_matches(page, web_stack)
    # the tooltip: hover over the chart where there is heat
    box = page.page.locator("#chart").bounding_box()
    page.page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4)
    page.wait("!document.getElementById('tooltip').hidden")
    tip = page.js("document.getElementById('tooltip').textContent")
    assert "UTC" in tip and "long heat" in tip and "short heat" in tip and "from" in tip
    assert page.errors == []


def test_controls_change_what_is_drawn_and_the_panel(page, web_stack):  # noqa: F811
    p = page
    before = p.heat()

    p.change(lambda: p.page.select_option("#market", "binance:ETHUSDT"))
    eth = p.heat()
    assert eth["sum"] != before["sum"] and eth["painted"] > 0
    assert_panel_matches(p, web_stack)

    p.change(lambda: p.page.click("#lookbacks button[data-value='12h']"))
    twelve = p.heat()
    assert twelve["sum"] != eth["sum"]
    assert_panel_matches(p, web_stack)

    p.change(lambda: p.page.fill("#threshold", "0.5"))
    strict = p.heat()
    assert strict["painted"] < twelve["painted"]          # more of the grid is noise at a higher threshold
    assert_panel_matches(p, web_stack)

    p.change(lambda: p.page.fill("#boost", "0.2"))
    boosted = p.heat()
    assert boosted["sum"] != strict["sum"]
    assert p.js("heatsvc.state.frame.boost") == pytest.approx(0.2, abs=1e-6)

    p.change(lambda: p.page.click("#tiers button[data-value='4']"))   # hide the 100x tier
    assert p.heat()["sum"] != boosted["sum"]

    p.page.click("#theme")
    assert p.js("document.documentElement.dataset.theme") == "light"
    assert p.errors == []


def test_a_server_update_reaches_the_page(page, web_stack):  # noqa: F811
    t0 = int(page.js("document.getElementById('data-time').dataset.ms"))
    updates = page.js("heatsvc.state.updates")
    web_stack.step()
    page.wait(f"heatsvc.state.updates > {updates}")
    page.wait(f"Number(document.getElementById('data-time').dataset.ms) > {t0}")
    assert page.errors == []


def test_the_page_reconnects_after_the_gateway_restarts(page, gw):
    frames = page.frames()
    gw.kill()
    page.wait("document.getElementById('conn').dataset.state === 'reconnecting'")
    gw.start()
    page.wait("document.getElementById('conn').dataset.state === 'live'", timeout=30)
    page.wait(f"heatsvc.state.frames > {frames}", timeout=30)
    # the browser logs the refused connections while the gateway is down; nothing else may fail
    assert [e for e in page.errors if "WebSocket" not in e and "ERR_CONNECTION_REFUSED" not in e] == []


def test_a_wrong_token_is_refused_and_the_right_one_opens_the_page(browser, web_stack):  # noqa: F811
    g = Gateway(web_stack.target, token=TOKEN)
    try:
        p = Page(browser, g.url + "/")
        assert p.page.url.endswith("/login")
        assert p.errors == []          # the login form loads nothing it would be refused
        p.page.fill("input[name=token]", "not-the-token")
        p.page.click("button[type=submit]")
        assert "Wrong token" in p.page.content()
        assert p.js("document.cookie") == ""
        p.page.fill("input[name=token]", TOKEN)
        p.page.click("button[type=submit]")
        p.wait("window.heatsvc && heatsvc.state.frames > 0")
        assert p.js("document.getElementById('conn').dataset.state") == "live"
        p.page.close()
    finally:
        g.close()


def test_csv_and_png_exports_download_the_view(page):
    with page.page.expect_download() as info:
        page.page.click("#png")
    png = open(info.value.path(), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    with page.page.expect_download() as info:
        page.page.click("#csv")
    lines = open(info.value.path()).read().splitlines()
    assert lines[0].startswith("column_time_utc,price_low") and len(lines) > 100
    assert info.value.suggested_filename.endswith(".csv")
    # the liquidation map of the newest column is drawn too
    painted = page.js("""() => { const c = document.getElementById('map');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
    assert painted > 500
    assert page.errors == []
