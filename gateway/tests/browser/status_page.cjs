// Drives the status page in Debian's headless chromium with playwright-core
// (deploy/install-test-peers.sh installs both); started by
// gateway/tests/status_page.rs, which runs the gateway and the load.
//
// Environment: SLUICE_BASE (http://127.0.0.1:port), SLUICE_SCENARIO
// ("open" or "tokens"), SLUICE_CHROMIUM (the browser executable),
// SLUICE_NODE_MODULES (where playwright-core is), SLUICE_SERVICES (comma
// separated names the page must show), SLUICE_TOPICS (likewise),
// SLUICE_WATCH (the service whose count must go up), SLUICE_GROUP_ROW
// ("group/topic/partition" the page must list, scenario "open"), SLUICE_WEIGHT
// ("service=weight" to set from the page), SLUICE_METRICS_TOKEN and
// SLUICE_ADMIN_TOKEN (scenario "tokens"), SLUICE_SCREENSHOT (a PNG path,
// optional). Prints one JSON line with what it saw; exits non-zero with
// the reason on the first failed check.
"use strict";
const path = require("path");
const { chromium } = require(path.join(process.env.SLUICE_NODE_MODULES, "playwright-core"));

const env = (name) => {
  const v = process.env[name];
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const base = env("SLUICE_BASE");
const scenario = env("SLUICE_SCENARIO");
const services = env("SLUICE_SERVICES").split(",");
const topics = env("SLUICE_TOPICS").split(",");
const watch = env("SLUICE_WATCH");
const [weightService, weightValue] = env("SLUICE_WEIGHT").split("=");

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
}

async function recordsIn(page, service) {
  const text = await page.textContent(`tr[data-service="${service}"] td[data-field=records_in]`);
  return Number(text);
}

async function showsServicesAndTopics(page) {
  for (const s of services) await page.waitForSelector(`#services tr[data-service="${s}"]`);
  for (const t of topics) await page.waitForSelector(`#topics tr[data-partition="${t}/0"]`);
}

// The count of `watch` goes up while the test produces.
async function countsGoUp(page) {
  const first = await recordsIn(page, watch);
  await page.waitForFunction(
    ([s, n]) => Number(document.querySelector(`tr[data-service="${s}"] td[data-field=records_in]`).textContent) > n,
    [watch, first],
  );
  const second = await recordsIn(page, watch);
  check(second > first, `records_in of ${watch} went from ${first} to ${second}`);
  // The rate is computed from two snapshots and shown.
  await page.waitForFunction(
    (s) => document.querySelector(`tr[data-service="${s}"] td[data-field=records_per_sec]`).textContent !== "–",
    watch,
  );
  return [first, second];
}

async function changeWeight(page) {
  await page.fill(`input[data-weight-input="${weightService}"]`, weightValue);
  await page.click(`button[data-weight-set="${weightService}"]`);
  await page.waitForFunction(
    (t) => document.getElementById("message").textContent.includes(t),
    `weight of ${weightService} is now ${weightValue}`,
  );
  // The next snapshot shows it.
  await page.waitForSelector(`tr[data-service="${weightService}"] td[data-field=weight][data-value="${weightValue}"]`);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: env("SLUICE_CHROMIUM"),
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const seen = { console_errors: [], requests: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
    page.setDefaultTimeout(30000);
    page.on("console", (m) => { if (m.type() === "error") seen.console_errors.push(m.text()); });
    page.on("pageerror", (e) => seen.console_errors.push("page error: " + e.message));
    page.on("request", (r) => seen.requests.push(r.url()));
    const response = await page.goto(base + "/");
    check(response.status() === 200, `GET / answered ${response.status()}`);
    check(await page.title() === "sluice status", "the page title");

    if (scenario === "open") {
      await page.waitForSelector("#status[data-state=live]");
      await showsServicesAndTopics(page);
      seen.records_in = await countsGoUp(page);
      // The group committed before the page opened, its lag growing.
      const groupRow = env("SLUICE_GROUP_ROW");
      await page.waitForSelector(`#groups tr[data-group="${groupRow}"]`);
      await page.waitForFunction(
        (r) => Number(document.querySelector(`#groups tr[data-group="${r}"] td[data-field=lag_records]`).textContent) > 0,
        groupRow,
      );
      await changeWeight(page);
    } else if (scenario === "tokens") {
      // No token: the feed is refused and the page asks for one.
      await page.waitForSelector("#status[data-state=token]");
      check((await page.textContent("#message")).includes("requires a token"), "the page asks for a token");
      check((await page.$$("#services tbody tr")).length === 0, "no data without a token");
      // A metrics token: data, but no weight controls.
      await page.fill("#token", env("SLUICE_METRICS_TOKEN"));
      await page.click("#token-save");
      await page.waitForSelector("#status[data-state=live]");
      await showsServicesAndTopics(page);
      seen.records_in = await countsGoUp(page);
      check((await page.$$("input[data-weight-input]")).length === 0, "no weight controls for a metrics token");
      // The token stays in this tab's session storage across a reload.
      await page.reload();
      await page.waitForSelector("#status[data-state=live]");
      const kept = await page.evaluate(() => sessionStorage.getItem("sluice.token"));
      check(kept === env("SLUICE_METRICS_TOKEN"), "the token is kept in sessionStorage");
      // An admin token: weight controls.
      await page.fill("#token", env("SLUICE_ADMIN_TOKEN"));
      await page.click("#token-save");
      await page.waitForSelector(`input[data-weight-input="${weightService}"]`);
      await changeWeight(page);
      for (const t of [env("SLUICE_METRICS_TOKEN"), env("SLUICE_ADMIN_TOKEN")]) {
        check(!seen.requests.some((u) => u.includes(t)), "a token appeared in a URL");
      }
      // Only the refused feed (401 before a token was entered) may log an error.
      seen.console_errors = seen.console_errors.filter((e) => !/status of 401/.test(e));
    } else {
      throw new Error("unknown scenario " + scenario);
    }
    if (process.env.SLUICE_SCREENSHOT) {
      // Let the charts gather a few points first.
      await page.waitForTimeout(Number(process.env.SLUICE_SCREENSHOT_WAIT_MS || 0));
      await page.screenshot({ path: process.env.SLUICE_SCREENSHOT, fullPage: true });
    }
    check(seen.console_errors.length === 0, "console errors: " + JSON.stringify(seen.console_errors));
  } finally {
    await browser.close();
  }
  delete seen.requests;
  console.log(JSON.stringify(seen));
}

main().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});
