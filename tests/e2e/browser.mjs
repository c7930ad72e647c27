// The person's path through Usher in a real browser: headless Debian chromium, driven by
// playwright-core (no browser download), against the stack of tests/e2e/stack.py.
//
//   node browser.mjs CONFIG.json
//
// CONFIG (written by test_browser.py): url, artifacts (screenshot dir), profile (a fresh,
// empty user-data dir), chromium, timeout_ms, people {name: {password, os_user?, uid?,
// mints_log?, server_log?}}, mapped [names], unmapped name.
//
// Each step is an assertion and ends with a screenshot (NN-step.png in artifacts). A failing
// step prints what was expected and what the page showed, the screenshot path
// (NN-step-FAILED.png), and exits 1. Exit 0: every step passed.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const base = cfg.url.replace(/\/$/, '');
const home = base + '/';
const T = cfg.timeout_ms || 15000;
const OUTPOST = '/outpost.goauthentik.io';
const [A, B] = cfg.mapped;
const M = cfg.unmapped;
const who = (name) => cfg.people[name];

class StepError extends Error {}
const fail = (msg) => { throw new StepError(msg); };
const expect = (cond, msg) => { if (!cond) fail(msg); };

function lines(file) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).length;
  } catch (e) {
    if (e.code === 'ENOENT') return 0;
    throw e;
  }
}
const mints = (name) => lines(who(name).mints_log);
// Requests a person's app has seen (its server log, one JSON line each).
const appRequests = (name) => lines(who(name).server_log);
const allMints = () => Object.fromEntries(cfg.mapped.map((n) => [n, mints(n)]));

fs.mkdirSync(cfg.artifacts, { recursive: true });
const t0 = Date.now();
const context = await chromium.launchPersistentContext(cfg.profile, {
  executablePath: cfg.chromium,
  headless: true,
  chromiumSandbox: false,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 900, height: 600 },
});
const page = context.pages()[0] || await context.newPage();
page.setDefaultTimeout(T);
page.setDefaultNavigationTimeout(T);
const consoleLines = [];
page.on('console', (m) => consoleLines.push(`console.${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => consoleLines.push(`page error: ${e.message}`));
console.log(`chromium up in ${Date.now() - t0} ms; screenshots in ${cfg.artifacts}`);

let n = 0;
const shots = [];
async function step(name, fn) {
  n += 1;
  const id = `${String(n).padStart(2, '0')}-${name}`;
  const started = Date.now();
  try {
    await fn();
  } catch (e) {
    const shot = path.join(cfg.artifacts, `${id}-FAILED.png`);
    let shotNote = shot;
    try { await page.screenshot({ path: shot, fullPage: true }); } catch (se) { shotNote = `(none: ${se.message})`; }
    let text = '';
    try { text = (await page.locator('body').innerText({ timeout: 2000 })).replace(/\s+/g, ' ').slice(0, 400); } catch { /* no page */ }
    const what = e instanceof StepError ? e.message : `${e.name}: ${e.message.split('\n')[0]}`;
    console.log(`FAIL ${id}: ${what}\n` +
      `  page url:   ${page.url()}\n  page text:  ${text || '(empty)'}\n` +
      `  screenshot: ${shotNote}` +
      (consoleLines.length ? `\n  browser console:\n    ${consoleLines.slice(-10).join('\n    ')}` : ''));
    throw new StepError(`step ${id} failed`);
  }
  const shot = path.join(cfg.artifacts, `${id}.png`);
  await page.screenshot({ path: shot, fullPage: true });
  shots.push(shot);
  console.log(`ok   ${id} (${Date.now() - started} ms) ${shot}`);
}

// --- what a page is
async function text(selector) {
  const loc = page.locator(selector);
  return (await loc.count()) ? (await loc.first().textContent()).trim() : null;
}

async function expectLoginPage(context) {
  const url = new URL(page.url());
  expect(url.pathname === `${OUTPOST}/login`,
    `${context}: expected the SSO login page (${OUTPOST}/login), got ${page.url()}`);
  expect(await page.locator('#username').count() === 1 && await page.locator('#password').count() === 1,
    `${context}: the SSO login page has no user name / password form`);
}

async function expectApp(name, context) {
  const p = who(name);
  expect(page.url() === home, `${context}: expected to land on ${home}, the browser is at ${page.url()}`);
  expect(await page.locator('input[type=password]').count() === 0,
    `${context}: the page asks for a password (a further prompt)`);
  const user = await text('#user');
  const uid = await text('#uid');
  expect(user !== null && uid !== null,
    `${context}: expected ${name}'s app page (user ${p.os_user}, uid ${p.uid}); this is not an app page`);
  const others = cfg.mapped.filter((o) => o !== name).map((o) => `${o}'s (uid ${who(o).uid})`);
  expect(user === p.os_user && uid === String(p.uid),
    `${context}: expected ${name}'s app (user ${p.os_user}, uid ${p.uid}), the page shows user ${user}, ` +
    `uid ${uid}${others.some((o) => o.includes(`uid ${uid})`)) ? ` — that is ${others.join(', ')} app` : ''}`);
}

async function expectEcho(name, context) {
  try {
    await page.waitForFunction(() => {
      const s = document.getElementById('ws-sent');
      const e = document.getElementById('ws-echo');
      return s && e && s.textContent !== '' && e.textContent === s.textContent;
    }, null, { timeout: T });
  } catch {
    fail(`${context}: the page's WebSocket echo did not arrive within ${T} ms: state ` +
      `"${await text('#ws-state')}", sent "${await text('#ws-sent')}", received "${await text('#ws-echo')}"`);
  }
  const state = await text('#ws-state');
  expect(state === 'open', `${context}: WebSocket state is "${state}", expected "open"`);
  const sent = await text('#ws-sent');
  expect(sent.startsWith(`hello from ${who(name).os_user} `),
    `${context}: the page sent "${sent}", expected a hello from ${who(name).os_user}`);
}

// Fill and submit the SSO form; resolves with the response to the GET of the page we land on.
async function signIn(name) {
  await page.fill('#username', name);
  await page.fill('#password', who(name).password);
  const landing = page.waitForResponse(
    (r) => r.url() === home && r.request().method() === 'GET' && r.request().isNavigationRequest());
  await page.click('#sign-in');
  const response = await landing;
  await page.waitForLoadState('load');
  return response;
}

async function signOut(name) {
  const r = await page.goto(`${base}${OUTPOST}/sign_out`);
  expect(r.status() === 200, `signing out: ${OUTPOST}/sign_out answered ${r.status()}`);
  const said = await text('#signed-out');
  expect(said && said.includes(`(${name})`), `signing out: expected "You are signed out (${name})", got "${said}"`);
}

async function openToLogin(context) {
  const r = await page.goto(home);
  expect(r.status() === 200, `${context}: ${home} answered ${r.status()} (wanted the login form)`);
  await expectLoginPage(`${context}, opening ${home}`);
}

async function whoamiFromPage() {
  return page.evaluate(async () => {
    const r = await fetch('/whoami', { credentials: 'same-origin' });
    return { status: r.status, body: r.status === 200 ? await r.json() : await r.text() };
  });
}

async function appCookie() {
  const c = (await context.cookies(home)).find((x) => x.name === 't3_session');
  return c ? c.value : null;
}

// --- the path
let exitCode = 0;
try {
  const before = allMints();
  let aliceCookie = null;

  await step('open-url-sso-login', async () => {
    await openToLogin('nobody signed in yet');
    expect(JSON.stringify(allMints()) === JSON.stringify(before),
      `nobody signed in yet, yet a mint happened: ${JSON.stringify(before)} -> ${JSON.stringify(allMints())}`);
  });

  await step(`sign-in-${A}-lands-in-app`, async () => {
    const r = await signIn(A);
    expect(r.status() === 200, `after signing in as ${A}, ${home} answered ${r.status()}`);
    await expectApp(A, `after signing in as ${A}`);
    const m = allMints();
    expect(m[A] - before[A] === 1 && m[B] === before[B],
      `${A}'s first visit should mint once for ${A} and never for ${B}: mints ${JSON.stringify(before)} -> ${JSON.stringify(m)}`);
    aliceCookie = await appCookie();
    expect(aliceCookie, `after ${A}'s first visit the browser holds no t3_session cookie`);
  });

  await step(`${A}-websocket-echo`, async () => {
    await expectEcho(A, `${A}'s app page`);
  });

  await step(`${A}-reload-no-new-mint`, async () => {
    const m0 = allMints();
    const r = await page.reload();
    expect(r.status() === 200, `reloading ${A}'s app: ${r.status()}`);
    await expectApp(A, `after reloading ${A}'s app`);
    await expectEcho(A, `after reloading ${A}'s app`);
    const m = allMints();
    expect(JSON.stringify(m) === JSON.stringify(m0),
      `reloading ${A}'s app minted again: ${JSON.stringify(m0)} -> ${JSON.stringify(m)}`);
    expect(await appCookie() === aliceCookie, `reloading ${A}'s app changed the app session cookie`);
  });

  await step(`sign-out-${A}`, async () => {
    await signOut(A);
  });

  await step(`open-url-sso-login-again`, async () => {
    await openToLogin(`after ${A} signed out`);
  });

  await step(`sign-in-${B}-same-profile-lands-in-own-app`, async () => {
    const m0 = allMints();
    const seenByA = appRequests(A);
    const r = await signIn(B);
    expect(r.status() === 200, `after signing in as ${B}, ${home} answered ${r.status()}`);
    await expectApp(B, `after signing in as ${B} in ${A}'s browser profile`);
    await expectEcho(B, `${B}'s app page`);
    const w = await whoamiFromPage();
    expect(w.status === 200 && w.body.user === who(B).os_user && w.body.uid === who(B).uid,
      `${B}'s page fetched /whoami and got ${JSON.stringify(w).slice(0, 200)}, expected ${who(B).os_user} (uid ${who(B).uid})`);
    const m = allMints();
    expect(m[B] - m0[B] === 1 && m[A] === m0[A],
      `${B}'s first visit should mint once for ${B} and never for ${A}: mints ${JSON.stringify(m0)} -> ${JSON.stringify(m)}`);
    const c = await appCookie();
    expect(c && c !== aliceCookie, `${B}'s browser still carries ${A}'s app session cookie`);
    expect(appRequests(A) === seenByA,
      `${A}'s app received ${appRequests(A) - seenByA} request(s) while ${B} was signed in`);
  });

  await step(`sign-out-${B}`, async () => {
    await signOut(B);
  });

  await step(`sign-in-${M}-unmapped-no-workspace`, async () => {
    await openToLogin(`after ${B} signed out`);
    const m0 = allMints();
    const seen = cfg.mapped.map(appRequests);
    const r = await signIn(M);
    expect(r.status() === 403, `${M} (signed in at the SSO, not in Usher's map) got ${r.status()}, expected Usher's 403`);
    expect((r.headers()['content-type'] || '').startsWith('text/html'),
      `${M}'s 403 is ${r.headers()['content-type']}, expected an HTML page for a browser`);
    const body = (await page.locator('body').innerText()).replace(/\s+/g, ' ');
    expect(/no workspace/i.test(body), `${M}'s 403 page does not say "no workspace": "${body.slice(0, 200)}"`);
    expect(!body.includes(who(A).os_user) && !body.includes(who(B).os_user),
      `${M}'s 403 page names another person's account: "${body.slice(0, 200)}"`);
    expect(await page.locator('#user').count() === 0, `${M} sees an app page`);
    expect(JSON.stringify(allMints()) === JSON.stringify(m0), `a mint happened for ${M}: ${JSON.stringify(allMints())}`);
    expect(JSON.stringify(cfg.mapped.map(appRequests)) === JSON.stringify(seen),
      `an app received a request while ${M} was signed in`);
  });

  console.log(`all ${n} steps passed in ${Date.now() - t0} ms; ${shots.length} screenshots in ${cfg.artifacts}`);
} catch (e) {
  if (!(e instanceof StepError)) console.log(`FAIL (outside a step): ${e.stack}`);
  exitCode = 1;
} finally {
  await context.close().catch(() => {});
}
process.exit(exitCode);
