// The product's main flow in headless Chromium, against a running local stack
// (`lablink-local`). Driven by `tests/tests/browser.rs`, which starts the stack, runs this
// script and then checks, outside the browser, what the VM's stand-in start-host received.
//
// Inputs (environment): LABLINK_URL, LABLINK_ADMIN_USER, LABLINK_ADMIN_PASSWORD,
// LABLINK_CRD_CODE, LABLINK_SHOTS (screenshot folder), CHROMIUM (default /usr/bin/chromium).
// Output: one JSON line on stdout, {"hostname","pin","email","launched_job"}; any failed
// expectation exits non-zero with a message and a `failure-*.png` screenshot.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const base = env('LABLINK_URL');
const adminUser = env('LABLINK_ADMIN_USER');
const adminPassword = env('LABLINK_ADMIN_PASSWORD');
const code = env('LABLINK_CRD_CODE');
const shots = env('LABLINK_SHOTS');
mkdirSync(shots, { recursive: true });

const email = 'grace.hopper@example.edu';
// What Google's "set up via SSH" page gives a participant to paste, line break included.
const commandFor = (c) =>
  `DISPLAY= /opt/google/chrome-remote-desktop/start-host --code="${c}" ` +
  `--redirect-url="https://remotedesktop.google.com/_/oauthredirect" \\\n  --name=$(hostname)`;
// The participant first pastes a code that has expired (the local stand-in start-host
// refuses codes containing "expired", as Google refuses expired ones).
const expiredCode = `${code}expired`;

function expect(ok, message) {
  if (!ok) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const pages = [];
const shot = async (page, name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

try {
  // --- The participant ---------------------------------------------------------------
  const participant = await (await browser.newContext()).newPage();
  pages.push(['participant', participant]);
  await participant.goto(`${base}/`);
  const shown = await participant.textContent('#free-count');
  const api = await participant.evaluate(async () => (await (await fetch('/api/unassigned_vms_count')).json()).count);
  expect(shown === '1' && api === 1, `the form shows the free count: page ${shown}, API ${api}`);
  await shot(participant, '01-participant-form');

  await participant.fill('#email', email);
  await participant.fill('#crd_command', commandFor(expiredCode));
  await Promise.all([participant.waitForURL('**/api/request_vm'), participant.click('button[type=submit]')]);
  const hostname = (await participant.textContent('#hostname'))?.trim();
  expect(/^[a-z0-9-]+-vm-\d+$/.test(hostname ?? ''), `the success page names the VM: ${hostname}`);
  // The success page is the seat's live page: without a reload it turns from
  // "connecting" to "refused" when the VM reports start-host refused the code, and
  // offers the form for a new one.
  const seatState = () => participant.getAttribute('#seat', 'data-state');
  await participant.waitForFunction(() => document.getElementById('seat').dataset.state === 'refused', null, { timeout: 30000 });
  expect(await participant.isVisible('#state-refused') && await participant.isVisible('#code-form'), 'the refused seat offers the form');
  await shot(participant, '02-participant-refused');
  // A fresh code from that form goes to the same VM; the page turns "ready" by itself.
  await participant.fill('#crd_command', commandFor(code));
  await Promise.all([participant.waitForURL('**/seat/*'), participant.click('#code-form button[type=submit]')]);
  await participant.waitForFunction(() => document.getElementById('seat').dataset.state === 'ready', null, { timeout: 30000 });
  expect((await participant.textContent('#hostname'))?.trim() === hostname, 'the fresh code went to the same VM');
  expect(await participant.isVisible('#state-ready'), `the ready message shows (${await seatState()})`);
  const pin = (await participant.textContent('#pin'))?.trim();
  expect(/^\d{6}$/.test(pin ?? ''), `the seat page shows a 6-digit PIN: ${pin}`);
  await shot(participant, '02-participant-success');
  // The seat page needs its token: a wrong one is a 404 that shows nothing.
  const stranger = await (await browser.newContext()).newPage();
  pages.push(['stranger', stranger]);
  const wrong = await stranger.goto(`${base}/seat/${'0'.repeat(64)}`);
  expect(wrong.status() === 404 && !(await stranger.content()).includes(hostname), `a wrong token: ${wrong.status()}`);
  expect((await stranger.textContent('h1')) === 'No such seat', 'a wrong token gets a page that says so');

  // A second participant keeps the form open: no VM is free now, and the count must rise
  // by itself (the page polls) when the admin's launch below brings one more.
  const waiting = await (await browser.newContext()).newPage();
  pages.push(['waiting', waiting]);
  await waiting.goto(`${base}/`);
  expect((await waiting.textContent('#free-count')) === '0', 'no VM is free after the assignment');

  // --- The admin ---------------------------------------------------------------------
  const admin = await (await browser.newContext()).newPage();
  pages.push(['admin', admin]);
  await admin.goto(`${base}/admin`);
  expect(admin.url().includes('/admin/login'), `an anonymous admin page leads to the login: ${admin.url()}`);
  await admin.fill('#user', adminUser);
  await admin.fill('#password', 'not-the-password');
  await admin.click('button[type=submit]');
  await admin.locator('#login-error').waitFor();
  await admin.fill('#user', adminUser);
  await admin.fill('#password', adminPassword);
  await Promise.all([admin.waitForURL(`${base}/admin`), admin.click('button[type=submit]')]);
  expect((await admin.textContent('h1')) === 'Dashboard', 'the login leads to the dashboard');
  await shot(admin, '03-admin-dashboard');

  await admin.goto(`${base}/admin/instances`);
  const row = admin.locator(`tr[data-hostname="${hostname}"]`);
  await row.waitFor();
  expect((await row.textContent()).includes(email), 'the instances page shows who has the VM');
  // The timings chart: at least one coloured phase of the startup bar, with its figure.
  await row.locator('svg rect title').first().waitFor({ state: 'attached' });
  const phases = await row.locator('svg rect title').allTextContents();
  expect(phases.some((t) => /^(provision|cloud-init|container): \d+(\.\d)? s$/.test(t)), `timing phases: ${phases}`);
  // How the VM's start-host run ended, refreshed in place (every 5 s) once reported.
  await row.locator('.start-host', { hasText: 'start-host: ok' }).waitFor({ timeout: 30000 });
  await shot(admin, '04-admin-instances');

  await Promise.all([admin.waitForURL(`**/admin/logs/${hostname}`), row.locator('a', { hasText: 'logs' }).click()]);
  // The VM's own log, shipped by its daemon, shows the start-host run, with the code and
  // PIN removed (the daemon never logs them).
  await admin.waitForFunction(() => document.getElementById('log').textContent.includes('--code=<code>'), null, { timeout: 30000 });
  if ((await admin.textContent('#log')).includes(code)) throw new Error('the CRD code reached the VM log');
  await admin.fill('#filter', 'start-host');
  const filtered = (await admin.textContent('#log')).split('\n').filter(Boolean);
  expect(filtered.length > 0 && filtered.every((l) => l.toLowerCase().includes('start-host')), 'the filter keeps matching lines only');
  await shot(admin, '05-admin-logs');

  await admin.goto(`${base}/admin/create`);
  await admin.fill('#num_vms', '1');
  // The deployment's VM settings are listed; this launch chooses its own instance type.
  expect((await admin.textContent('#vm-settings')).includes('Instance type'), 'the launch form lists the VM settings');
  await admin.click('#overrides summary');
  await admin.fill('#instance_type', 'g5.xlarge');
  await Promise.all([admin.waitForURL('**/admin/jobs/*'), admin.click('#launch-form button[type=submit]')]);
  const job = decodeURIComponent(admin.url().split('/admin/jobs/')[1]);
  await admin.waitForFunction(
    () => ['succeeded', 'failed'].includes(document.getElementById('state').textContent),
    null,
    { timeout: 120000 },
  );
  const state = await admin.textContent('#state');
  expect(state === 'succeeded', `the launch job finished: ${state} ${await admin.textContent('#error')}`);
  expect((await admin.textContent('#vms')).includes('-vm-'), 'the job page names the launched VM');
  expect((await admin.textContent('#launch-settings')).includes('instance type g5.xlarge'), 'the job page shows the launch\'s own setting');
  await shot(admin, '06-admin-job');

  // The new VM enrolls, reports running and becomes free: the waiting participant's page
  // shows it without a reload.
  await waiting.waitForFunction(() => document.getElementById('free-count').textContent === '1', null, { timeout: 90000 });
  await shot(waiting, '07-participant-count-rose');

  await admin.goto(`${base}/admin/instances`);
  await admin.locator('tr[data-hostname]').nth(1).waitFor();
  await shot(admin, '08-admin-instances-after-launch');

  // Data export from the dashboard's button: the participant's VM answers (its workspace
  // has no result files yet), the job finishes and offers the zip.
  await admin.goto(`${base}/admin`);
  await Promise.all([admin.waitForURL('**/admin/jobs/*'), admin.click('#export-form button[type=submit]')]);
  await admin.waitForFunction(
    () => ['succeeded', 'failed'].includes(document.getElementById('state').textContent),
    null,
    { timeout: 60000 },
  );
  expect((await admin.textContent('#state')) === 'succeeded', `the export finished: ${await admin.textContent('#error')}`);
  const exported = admin.locator(`#export-vms tr[data-hostname="${hostname}"]`);
  expect((await exported.textContent()).includes('no files'), `the VM's export row: ${await exported.textContent()}`);
  const href = await admin.getAttribute('#download', 'href');
  const [status, type] = await admin.evaluate(async (u) => {
    const r = await fetch(u);
    return [r.status, r.headers.get('content-type')];
  }, href);
  expect(status === 200 && type === 'application/zip', `the download: ${status} ${type}`);
  await shot(admin, '09-admin-export');

  // The admin moves the participant's seat to another email from the VM's row; the
  // participant's page, still open, says so without a reload, and the row records it.
  await admin.goto(`${base}/admin/instances`);
  const seatRow = admin.locator(`tr[data-hostname="${hostname}"]`);
  await seatRow.locator('details.vm-actions summary').click();
  await seatRow.locator('form[action$="/reassign"] input[name=email]').fill('ada.lovelace@example.edu');
  await Promise.all([
    admin.waitForResponse((r) => r.url().endsWith('/reassign') && r.status() === 303),
    seatRow.locator('form[action$="/reassign"] button[type=submit]').click(),
  ]);
  await admin.locator(`tr[data-hostname="${hostname}"] .actions`, { hasText: 'reassign by ' + adminUser }).waitFor({ timeout: 15000 });
  expect((await admin.locator(`tr[data-hostname="${hostname}"]`).textContent()).includes('ada.lovelace@example.edu'), 'the row names the new participant');
  await participant.waitForFunction(() => document.getElementById('seat').dataset.state === 'reassigned', null, { timeout: 15000 });
  expect(await participant.isHidden('#code-form') && await participant.isHidden('#pin-box'), 'a moved seat shows no form and no PIN');
  await shot(participant, '10-participant-reassigned');
  await shot(admin, '11-admin-reassigned');

  console.log(JSON.stringify({ hostname, pin, email, launched_job: job }));
} catch (e) {
  for (const [name, page] of pages) {
    await shot(page, `failure-${name}`).catch(() => {});
    console.error(`--- ${name} at ${page.url()}`);
  }
  console.error(e.stack ?? String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
