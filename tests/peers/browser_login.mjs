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
// Chromium trusts what its NSS database trusts: a test that serves https with its own CA runs
// this with HOME pointing at a directory whose .pki/nssdb trusts that CA (certutil), so
// certificates are verified as for any site, without switching verification off.
//
// Prints one JSON line: {"url": final URL, "body": final page text, "cookies": [{name, domain,
// path, secure, httpOnly, sameSite}], "set_cookies": [{url, header}] (every Set-Cookie header the
// browser received, in order)}.
// Run by the integration tests in `browser.rs` and `oidc.rs`.
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
  const setCookies = [];
  page.on('response', async (response) => {
    const headers = await response.headersArray().catch(() => []);
    for (const { name, value } of headers) {
      if (name.toLowerCase() === 'set-cookie') {
        for (const header of value.split('\n')) setCookies.push({ url: response.url(), header });
      }
    }
  });
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
  const cookies = (await context.cookies()).map((c) => ({
    name: c.name, domain: c.domain, path: c.path, secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite,
  }));
  console.log(JSON.stringify({ url: page.url(), body, cookies, set_cookies: setCookies }));
} finally {
  await browser.close();
}
