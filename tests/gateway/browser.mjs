// Headless Chromium (Debian's, at $CHROMIUM or /usr/bin/chromium) driven by playwright-core
// for tests/gateway.rs: opens URL (a gateway in front of the sidecar), which sends an
// unsigned-in browser through the mock IdP and /oauth2/callback back to the page; then
// reads the auth-token of the page's first TAG (default released-page), saves a screenshot
// to SCREENSHOT, and prints one JSON line:
//   {"url", "token", "title", "requests": [{"method","url","type","status"}]}.
//   node browser.mjs URL SCREENSHOT [TAG]
import { chromium } from 'playwright-core';

const [url, screenshot, tag = 'released-page'] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // --no-sandbox: CI runs as root, where Chromium refuses its sandbox. Everything the page
  // loads is on 127.0.0.1 and made by the test. --no-proxy-server: never leave loopback.
  args: ['--no-sandbox', '--no-proxy-server', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage();
  const requests = [];
  page.on('response', (response) => {
    const request = response.request();
    requests.push({
      method: request.method(),
      url: request.url(),
      type: request.resourceType(),
      status: response.status(),
    });
  });
  await page.goto(url, { waitUntil: 'load', timeout: 30000 });
  const token = await page.evaluate((t) =>
    document.querySelector(t)?.getAttribute('auth-token') ?? null, tag);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ url: page.url(), token, title: await page.title(), requests }));
} finally {
  await browser.close();
}
