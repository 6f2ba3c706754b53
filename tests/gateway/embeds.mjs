// Headless Chromium (Debian's, at $CHROMIUM or /usr/bin/chromium) driven by playwright-core
// for tests/embed_client.rs: the browser side of client-rendered embeds.
//   node embeds.mjs PAGE_URL FOREIGN_URL SCREENSHOT
// PAGE_URL is an app page behind the sidecar (embed.client.inject on) whose own script adds
// <released-page id="first"> 500 ms after load, and <released-page id="second"> when
// #nav is clicked (a client-side navigation). Requests carry the identity headers a gateway
// would add. FOREIGN_URL is a page on another origin whose script calls the sidecar's token
// endpoint. Prints one JSON line:
//   {"first", "second", "foreign", "console": [...], "requests": [{"method","url","status"}]}
import { chromium } from 'playwright-core';

const [pageUrl, foreignUrl, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // --no-sandbox: CI runs as root, where Chromium refuses its sandbox. Everything the page
  // loads is on 127.0.0.1 and made by the test. --no-proxy-server: never leave loopback.
  args: ['--no-sandbox', '--no-proxy-server', '--disable-dev-shm-usage'],
});
try {
  const context = await browser.newContext({
    extraHTTPHeaders: { 'X-Forwarded-User': 'alice', 'X-Forwarded-Email': 'alice@example.com' },
  });
  const page = await context.newPage();
  const requests = [];
  const consoleLines = [];
  page.on('console', (msg) => consoleLines.push(msg.text()));
  page.on('response', (response) => {
    const request = response.request();
    requests.push({ method: request.method(), url: request.url(), status: response.status() });
  });
  await page.goto(pageUrl, { waitUntil: 'load', timeout: 30000 });
  const token = async (selector) => {
    await page.waitForSelector(`${selector}[auth-token]`, { state: 'attached', timeout: 15000 });
    return page.evaluate((s) => document.querySelector(s).getAttribute('auth-token'), selector);
  };
  const first = await token('#first');
  await page.click('#nav');
  const second = await token('#second');
  await page.screenshot({ path: screenshot, fullPage: true });

  // Another origin (another port): its script asks the sidecar for a token.
  const foreign = await context.newPage();
  foreign.on('response', (response) => {
    const request = response.request();
    requests.push({ method: request.method(), url: request.url(), status: response.status() });
  });
  await foreign.goto(foreignUrl, { waitUntil: 'load', timeout: 30000 });
  await foreign.waitForFunction(() => window.result !== undefined, null, { timeout: 15000 });
  const foreignResult = await foreign.evaluate(() => window.result);
  console.log(JSON.stringify({ first, second, foreign: foreignResult, console: consoleLines, requests }));
} finally {
  await browser.close();
}
