// Signs in through a Portcullis login form in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core), as a person would, and prints what the browser ended on.
//
//   node browser_login.mjs URL USERNAME PASSWORD
//
// Prints one JSON line: {"url": final URL, "body": final page text, "cookies": [...]}.
// Run by the integration test `browser::a_person_signs_in_with_a_real_browser`.
import { chromium } from 'playwright-core';

const [url, username, password] = process.argv.slice(2);
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
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  const body = await page.textContent('body');
  const cookies = (await context.cookies()).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path }));
  console.log(JSON.stringify({ url: page.url(), body, cookies }));
} finally {
  await browser.close();
}
