// Loads the status page in headless Chromium while a herd is held at the origin, and checks
// what a person would look for: the flight's path with its follower count, and a drawn chart.
//
//   node tests/browser/status_page.mjs URL PATH FOLLOWERS [SCREENSHOT.png]
//
// Needs CHROMIUM (the browser's executable) and PLAYWRIGHT_CORE (the playwright-core package
// directory) in the environment; .ci/run installs both. Exits 0 when every check passes,
// 1 with what it saw otherwise.
import { createRequire } from "node:module";

const [url, path, followers, screenshot] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  page.on("requestfailed", (r) => { if (!r.url().startsWith(url)) errors.push("external request: " + r.url()); });
  await page.goto(url);
  // The flight and its followers, as the table shows them (bounded by the timeout).
  const row = page.locator(`#flights tbody tr[data-path="${path}"]`);
  await row.waitFor({ timeout: 15000 });
  await page.waitForFunction(
    ([p, n]) => document.querySelector(`#flights tbody tr[data-path="${p}"]`)?.dataset.followers === n,
    [path, followers], { timeout: 15000 });
  const shown = await row.locator("td.followers").textContent();
  if (shown.replace(/,/g, "") !== followers) throw new Error(`followers cell says ${shown}, not ${followers}`);
  // The chart draws once two samples exist (a sample every 2 s): it then has coloured pixels.
  await page.waitForFunction(() => Number(document.getElementById("chart").dataset.points) >= 2, null, { timeout: 15000 });
  const coloured = await page.evaluate(() => {
    const c = document.getElementById("chart");
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i + 3] > 0 && (data[i] !== data[i + 1] || data[i + 1] !== data[i + 2])) n++;
    return n;
  });
  if (coloured < 100) throw new Error(`the chart drew only ${coloured} coloured pixels`);
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`status page ok: ${path} with ${shown} followers, chart with ${coloured} coloured pixels`);
} catch (err) {
  failed = true;
  console.error("status page check failed:", err.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
