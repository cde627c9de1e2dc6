"""Screenshot of the live page (docs/web.png), in headless Chromium, of a running gateway:

    heatsvc serve --demo --web &      # wait ~2.5 min: the demo's HYPEUSDT crash arrives about 2 min in
    python bench/web_screenshot.py http://127.0.0.1:8080 binance:HYPEUSDT 1d docs/web.png
"""
import sys
import time

from playwright.sync_api import sync_playwright


def open_page(p, url: str):
    """Debian's Chromium, headless, on the page at `url`, once its first grid frame has been drawn."""
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    page.goto(url + "/")
    for _ in range(300):
        if page.evaluate("window.heatsvc && heatsvc.state.frames > 0"):
            break
        time.sleep(0.1)
    return browser, page


def main(url: str, market: str, lookback: str, out: str) -> None:
    with sync_playwright() as p:
        browser, page = open_page(p, url)
        page.select_option("#market", market)
        page.click(f"#lookbacks button[data-value='{lookback}']")
        time.sleep(3)
        box = page.locator("#chart").bounding_box()
        # hover the hottest cell of a column three quarters along, to show the tooltip
        at = page.evaluate("""() => { const f = heatsvc.state.frame, c = Math.floor(f.columns * 0.75);
            let best = 0;
            for (let r = 0; r < f.rows; r++) if (Math.max(f.long[r * f.columns + c], f.short[r * f.columns + c]) >
                Math.max(f.long[best * f.columns + c], f.short[best * f.columns + c])) best = r;
            return heatsvc.cellCentre(c, best); }""")
        page.mouse.move(box["x"] + at["x"], box["y"] + at["y"])
        time.sleep(0.5)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
