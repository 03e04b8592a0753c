// OpenMeter's official Node SDK (@openmeter/sdk, pinned in package.json) against a real `tallybook serve`.
// Run by tests/sdk/test_openmeter_node.py, which starts the server (wired to the fake Stripe) and passes:
//   TALLYBOOK_URL, TALLYBOOK_API_KEY  the server and an admin key
//   STRIPE_CUSTOMER_ID                a customer that exists in the fake Stripe
//   RESULT_FILE                       where to write what the Python side checks in the fake Stripe
// The steps share state (a meter, events, customers), so they run in order inside one test.
import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { test } from 'node:test'

import { HTTPError, OpenMeter } from '@openmeter/sdk'

const env = (name) => {
  const value = process.env[name]
  assert.ok(value, `${name} must be set (run this through tests/sdk/test_openmeter_node.py)`)
  return value
}

const om = new OpenMeter({ baseUrl: env('TALLYBOOK_URL'), apiKey: env('TALLYBOOK_API_KEY') })
const stripeCustomerId = env('STRIPE_CUSTOMER_ID')
const FROM = new Date('2026-01-01T00:00:00Z')
const TO = new Date('2026-01-01T02:00:00Z')
const iso = (d) => d.toISOString().replace('.000Z', 'Z')

// Rows with usage, in a stable order: OpenMeter may also answer empty windows, which say nothing here.
const rows = (result) =>
  result.data
    .filter((row) => row.value !== 0)
    .map((row) => ({
      windowStart: iso(row.windowStart),
      windowEnd: iso(row.windowEnd),
      value: row.value,
      ...(row.subject ? { subject: row.subject } : {}),
      ...(row.customerId ? { customerId: row.customerId } : {}),
      ...(row.groupBy && Object.keys(row.groupBy).length ? { groupBy: row.groupBy } : {}),
    }))
    .sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)))

test('the OpenMeter Node SDK against tallybook serve', async (t) => {
  const result = {}
  let meter

  await t.test('meters: create, get by slug and id, list, update', async () => {
    meter = await om.meters.create({
      slug: 'node_tokens',
      name: 'Node tokens',
      description: 'tokens per model',
      eventType: 'node_prompt',
      aggregation: 'SUM',
      valueProperty: '$.tokens',
      groupBy: { model: '$.model' },
    })
    assert.equal(meter.slug, 'node_tokens')
    assert.equal(meter.aggregation, 'SUM')
    assert.deepEqual(meter.groupBy, { model: '$.model' })
    assert.ok(meter.createdAt instanceof Date, 'timestamps decode as dates')

    assert.equal((await om.meters.get('node_tokens')).id, meter.id)
    assert.equal((await om.meters.get(meter.id)).slug, 'node_tokens')
    const listed = await om.meters.list()
    assert.deepEqual(
      listed.map((m) => m.slug),
      ['node_tokens'],
    )

    const updated = await om.meters.update('node_tokens', {
      name: 'Node tokens (by model and type)',
      groupBy: { model: '$.model', type: '$.type' },
    })
    assert.equal(updated.id, meter.id)
    assert.equal(updated.name, 'Node tokens (by model and type)')
    assert.deepEqual(updated.groupBy, { model: '$.model', type: '$.type' })
    assert.equal(updated.eventType, 'node_prompt')
  })

  await t.test('events: ingest one, ingest a batch, list', async () => {
    await om.events.ingest({
      id: 'node-e1',
      source: 'node-test',
      type: 'node_prompt',
      subject: 'node-acme-prod',
      time: new Date('2026-01-01T00:10:00Z'),
      data: { tokens: 10, model: 'gpt', type: 'input' },
    })
    await om.events.ingest([
      {
        id: 'node-e2',
        source: 'node-test',
        type: 'node_prompt',
        subject: 'node-acme-prod',
        time: new Date('2026-01-01T00:40:00Z'),
        data: { tokens: 2.5, model: 'claude', type: 'output' },
      },
      {
        id: 'node-e3',
        source: 'node-test',
        type: 'node_prompt',
        subject: 'node-other',
        time: new Date('2026-01-01T01:20:00Z'),
        data: { tokens: 7, model: 'claude', type: 'input' },
      },
    ])
    // The SDK fills in id (a UUID), source and time (now) when they are left out.
    await om.events.ingest({ type: 'node_ping', subject: 'node-other', data: {} })

    const listed = await om.events.list({ from: FROM, to: TO })
    assert.deepEqual(listed.map((e) => e.event.id).sort(), ['node-e1', 'node-e2', 'node-e3'])
    const first = listed.find((e) => e.event.id === 'node-e1')
    assert.equal(first.event.subject, 'node-acme-prod')
    assert.equal(first.event.source, 'node-test')
    assert.deepEqual(first.event.data, { tokens: 10, model: 'gpt', type: 'input' })
    assert.ok(first.ingestedAt instanceof Date)

    const bySubject = await om.events.list({ from: FROM, to: TO, subject: 'node-other' })
    assert.deepEqual(
      bySubject.map((e) => e.event.id),
      ['node-e3'],
    )
    const limited = await om.events.list({ from: FROM, to: TO, limit: 1 })
    assert.equal(limited.length, 1)

    const defaulted = await om.events.list({ subject: 'node-other', from: new Date(Date.now() - 3_600_000) })
    const ping = defaulted.find((e) => e.event.type === 'node_ping')
    assert.ok(ping, 'the event ingested with the SDK defaults is listed')
    assert.equal(ping.event.source, '@openmeter/sdk')
    assert.match(ping.event.id, /^[0-9a-f-]{36}$/)
  })

  await t.test('meters.query: windows, groupBy, filterGroupBy, subject', async () => {
    const hourly = await om.meters.query('node_tokens', { from: FROM, to: TO, windowSize: 'HOUR', groupBy: ['model'] })
    assert.equal(iso(hourly.from), '2026-01-01T00:00:00Z')
    assert.equal(iso(hourly.to), '2026-01-01T02:00:00Z')
    assert.equal(hourly.windowSize, 'HOUR')
    assert.deepEqual(rows(hourly), [
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-01T01:00:00Z', value: 10, groupBy: { model: 'gpt' } },
      {
        windowStart: '2026-01-01T00:00:00Z',
        windowEnd: '2026-01-01T01:00:00Z',
        value: 2.5,
        groupBy: { model: 'claude' },
      },
      { windowStart: '2026-01-01T01:00:00Z', windowEnd: '2026-01-01T02:00:00Z', value: 7, groupBy: { model: 'claude' } },
    ].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))))

    const claude = await om.meters.query('node_tokens', { from: FROM, to: TO, filterGroupBy: { model: 'claude' } })
    assert.deepEqual(rows(claude), [
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-01T02:00:00Z', value: 9.5 },
    ])

    const bySubject = await om.meters.query('node_tokens', {
      from: FROM,
      to: TO,
      subject: ['node-acme-prod'],
      groupBy: ['subject', 'type'],
    })
    assert.deepEqual(rows(bySubject), [
      {
        windowStart: '2026-01-01T00:00:00Z',
        windowEnd: '2026-01-01T02:00:00Z',
        value: 10,
        subject: 'node-acme-prod',
        groupBy: { type: 'input' },
      },
      {
        windowStart: '2026-01-01T00:00:00Z',
        windowEnd: '2026-01-01T02:00:00Z',
        value: 2.5,
        subject: 'node-acme-prod',
        groupBy: { type: 'output' },
      },
    ])

    const posted = await om.meters.queryPost('node_tokens', {
      from: FROM.toISOString(),
      to: '2026-01-02T00:00:00.000Z',
      windowSize: 'DAY',
      groupBy: ['subject'],
    })
    assert.deepEqual(rows(posted), [
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-02T00:00:00Z', value: 12.5, subject: 'node-acme-prod' },
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-02T00:00:00Z', value: 7, subject: 'node-other' },
    ])
  })

  let acme
  await t.test('customers: create, get, list, update, query by customer, delete', async () => {
    acme = await om.customers.create({
      name: 'ACME, Inc.',
      key: 'node-acme',
      primaryEmail: 'billing@acme.example',
      currency: 'USD',
      usageAttribution: { subjectKeys: ['node-acme-prod'] },
      metadata: { tier: 'gold' },
    })
    assert.equal(acme.key, 'node-acme')
    assert.deepEqual(acme.usageAttribution, { subjectKeys: ['node-acme-prod'] })
    assert.deepEqual(acme.metadata, { tier: 'gold' })

    assert.equal((await om.customers.get('node-acme')).id, acme.id)
    assert.equal((await om.customers.get(acme.id)).name, 'ACME, Inc.')

    const page = await om.customers.list({ key: 'node-acme', pageSize: 10 })
    assert.equal(page.totalCount, 1)
    assert.deepEqual(
      page.items.map((c) => c.id),
      [acme.id],
    )

    const updated = await om.customers.update('node-acme', {
      name: 'ACME Corporation',
      key: 'node-acme',
      primaryEmail: 'billing@acme.example',
      currency: 'USD',
      usageAttribution: { subjectKeys: ['node-acme-prod'] },
    })
    assert.equal(updated.id, acme.id)
    assert.equal(updated.name, 'ACME Corporation')

    const byCustomer = await om.meters.query('node_tokens', {
      from: FROM,
      to: TO,
      filterCustomerId: [acme.id],
      groupBy: ['customer_id'],
    })
    assert.deepEqual(rows(byCustomer), [
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-01T02:00:00Z', value: 12.5, customerId: acme.id },
    ])

    const gone = await om.customers.create({ name: 'Short-lived', key: 'node-gone' })
    await om.customers.delete(gone.id)
    const deleted = await om.customers.get(gone.id)
    assert.ok(deleted.deletedAt instanceof Date, 'a deleted customer is kept, with deletedAt')
    const live = await om.customers.list({ key: 'node-gone' })
    assert.equal(live.totalCount, 0)
  })

  await t.test('customer apps: upsert type stripe, list, stripe data', async () => {
    const upserted = await om.customers.apps.upsert('node-acme', [{ type: 'stripe', stripeCustomerId }])
    assert.deepEqual(upserted, [{ type: 'stripe', stripeCustomerId }])
    const listed = await om.customers.apps.list('node-acme')
    assert.deepEqual(listed.items, [{ type: 'stripe', stripeCustomerId }])
    assert.deepEqual(await om.customers.stripe.get(acme.id), { type: 'stripe', stripeCustomerId })
    const again = await om.customers.stripe.upsert('node-acme', { stripeCustomerId })
    assert.equal(again.stripeCustomerId, stripeCustomerId)
  })

  await t.test('apps.stripe.createCheckoutSession', async () => {
    const existing = await om.apps.stripe.createCheckoutSession({
      customer: { key: 'node-acme' },
      options: { currency: 'USD', successURL: 'https://app.example.com/billing/done', clientReferenceID: 'node-1' },
    })
    assert.equal(existing.customerId, acme.id)
    assert.equal(existing.stripeCustomerId, stripeCustomerId, 'the linked Stripe customer is used')
    assert.equal(existing.mode, 'setup')
    assert.equal(existing.status, 'open')
    assert.equal(existing.currency, 'USD')
    assert.equal(existing.clientReferenceId, 'node-1')
    assert.match(existing.sessionId, /^cs_test_/)
    assert.match(existing.setupIntentId, /^seti_/)
    assert.ok(existing.createdAt instanceof Date && existing.expiresAt > existing.createdAt)

    const created = await om.apps.stripe.createCheckoutSession({
      customer: { name: 'Globex', key: 'node-globex', usageAttribution: { subjectKeys: ['node-globex-prod'] } },
      options: { currency: 'EUR', successURL: 'https://app.example.com/billing/done' },
    })
    const globex = await om.customers.get('node-globex')
    assert.equal(created.customerId, globex.id)
    assert.deepEqual(globex.usageAttribution, { subjectKeys: ['node-globex-prod'] })
    assert.match(created.stripeCustomerId, /^cus_/)
    assert.notEqual(created.stripeCustomerId, stripeCustomerId)
    assert.equal((await om.customers.stripe.get('node-globex')).stripeCustomerId, created.stripeCustomerId)

    result.sessions = [
      { sessionId: existing.sessionId, stripeCustomerId, customerId: acme.id },
      { sessionId: created.sessionId, stripeCustomerId: created.stripeCustomerId, customerId: globex.id },
    ]
  })

  await t.test('errors are HTTPErrors with the problem fields', async () => {
    await assert.rejects(om.meters.get('no_such_meter'), (error) => {
      assert.ok(error instanceof HTTPError)
      assert.equal(error.status, 404)
      assert.match(error.message, /no_such_meter/)
      return true
    })
    await assert.rejects(
      om.meters.create({ slug: 'node_tokens', eventType: 'x', aggregation: 'COUNT' }),
      (error) => error instanceof HTTPError && error.status === 409,
    )
  })

  await t.test('meters.delete', async () => {
    await om.meters.delete('node_tokens')
    await assert.rejects(om.meters.get('node_tokens'), (error) => error.status === 404)
  })

  writeFileSync(env('RESULT_FILE'), JSON.stringify(result))
})
