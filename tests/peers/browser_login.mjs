// Signs in through a login form in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core), as a person would: the form the protected URL leads to (a Portcullis
// plugin's, or an identity provider's on another port), then every redirect and auto-posted
// form until the browser is back on URL. Prints what the browser ended on.
//
//   node browser_login.mjs URL USERNAME PASSWORD [consent]
//
// With `consent`, a consent form (an OpenID Provider's) follows the login form: its submit button
// is pressed too.
//
// Prints one JSON line: {"url": final URL, "body": final page text, "cookies": [...]}.
// Run by the integration tests in `browser.rs`.
import { chromium } from 'playwright-core';

const [url, username, password, consent] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(url);
  await page.fill('#username', username);
  await page.fill('#password', password);
  await page.click('button[type=submit]');
  if (consent === 'consent') {
    await page.waitForSelector('input[name=prompt][value=consent]', { state: 'attached', timeout: 30000 });
    await page.click('button[type=submit]');
  }
  await page.waitForURL(url, { timeout: 30000 });
  const body = await page.textContent('body');
  const cookies = (await context.cookies()).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path }));
  console.log(JSON.stringify({ url: page.url(), body, cookies }));
} finally {
  await browser.close();
}
