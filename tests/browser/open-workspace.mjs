// Opens a Workspace URL in Debian's headless Chromium like a person would: logs in to
// code-server with the password (when one is given) and waits until the file explorer
// shows the expected file. Exits non-zero when it does not; always leaves a screenshot.
//
//   node open-workspace.mjs URL PASSWORD|- EXPECTED_FILE SCREENSHOT.png [STAY_SECONDS]
// With STAY_SECONDS the page stays open that long afterwards, as a person working would
// (code-server's heartbeat then shows activity).
// PASSWORD `@env` reads it from WORKSPACE_PASSWORD, so it is on no command line.
// CHROMIUM_EXTRA_ARGS: a JSON array of further Chromium flags (e.g. --host-resolver-rules).
// REQUIRE_SECURE_CONTEXT=1: fail unless the page is a secure context (trusted HTTPS) and
// shows no "insecure context" notice.
import { chromium } from 'playwright-core';

const [url, passwordArg, expected, screenshot, stay] = process.argv.slice(2);
const password = passwordArg === '@env' ? process.env.WORKSPACE_PASSWORD : passwordArg;
const extraArgs = process.env.CHROMIUM_EXTRA_ARGS ? JSON.parse(process.env.CHROMIUM_EXTRA_ARGS) : [];
if (!url || !password || !expected || !screenshot) {
  console.error('usage: open-workspace.mjs URL PASSWORD|- EXPECTED_FILE SCREENSHOT.png');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync', ...extraArgs],
});
let ok = false;
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
const row = page.locator(`.explorer-folders-view .monaco-list-row[aria-label^="${expected}"], .explorer-folders-view .label-name:text-is("${expected}")`).first();
const field = page.locator('input[type="password"]');
const errorPage = () => page.url().startsWith('chrome-error://');

// Loads the URL, logs in when asked, and waits for the explorer to list the file. Chromium
// drops loads with ERR_NETWORK_CHANGED whenever an interface appears on the host, which the
// bed does each time a machine boots beside this test: such a load is tried again (a
// limited number of times); anything else fails at once.
async function openWorkbench() {
  for (let attempt = 1; ; attempt++) {
    try {
      await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 60_000 });
      const deadline = Date.now() + 120_000;
      let typed = false;
      while (Date.now() < deadline) {
        if (errorPage()) throw new Error(`the page failed to load (${page.url()})`);
        if (await row.isVisible().catch(() => false)) return;
        if (!typed && password !== '-' && await field.isVisible().catch(() => false)) {
          await field.fill(password);
          await page.keyboard.press('Enter');
          typed = true;
        }
        await page.waitForTimeout(500);
      }
      throw new Error(`the explorer did not list ${expected} within 120s`);
    } catch (e) {
      const networkChanged = /ERR_NETWORK_CHANGED|chrome-error:/.test(e.message) || errorPage();
      if (!networkChanged || attempt >= 5) throw e;
      console.log(`attempt ${attempt}: ${e.message}; loading again`);
      await page.waitForTimeout(1_000);
    }
  }
}

try {
  await openWorkbench();
  // The folder is pre-trusted: VS Code's trust prompt must never show.
  await page.waitForTimeout(2_000);
  if (await page.getByText('Do you trust the authors', { exact: false }).count() > 0) {
    throw new Error('the workspace trust prompt is shown');
  }
  console.log(`explorer shows ${expected}`);
  if (process.env.REQUIRE_SECURE_CONTEXT === '1') {
    if (!(await page.evaluate(() => window.isSecureContext))) throw new Error('the page is not a secure context');
    // code-server warns "... is being accessed in an insecure context" in a notification
    await page.waitForTimeout(3_000);
    const text = await page.evaluate(() => document.body.innerText);
    if (/insecure context/i.test(text)) throw new Error('the page shows an "insecure context" notice');
    console.log('secure context, no insecure-context notice');
  }
  ok = true;
  if (stay) {
    const until = Date.now() + Number(stay) * 1000;
    while (Date.now() < until) {
      // Open the file now and then: real use, which keeps code-server's heartbeat going.
      await row.click().catch(() => {});
      await page.waitForTimeout(5_000);
    }
  }
} catch (e) {
  console.error(`failed: ${e.message}`);
} finally {
  await page.screenshot({ path: screenshot }).catch(() => {});
  await browser.close();
}
process.exit(ok ? 0 : 1);
