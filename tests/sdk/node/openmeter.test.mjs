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
const HOUR_1 = new Date('2026-01-01T01:00:00Z')
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

  await t.test('meters.listGroupByValues, and the meter subjects through the typed client', async () => {
    assert.deepEqual(await om.meters.listGroupByValues('node_tokens', 'model', { from: FROM, to: TO }), ['claude', 'gpt'])
    assert.deepEqual(await om.meters.listGroupByValues('node_tokens', 'type', { from: FROM, to: TO }), ['input', 'output'])
    assert.deepEqual(await om.meters.listGroupByValues(meter.id, 'model', { from: HOUR_1, to: TO }), ['claude'])
    // `to` is exclusive: the gpt event at 00:10 is not in [00:00, 00:10).
    assert.deepEqual(
      await om.meters.listGroupByValues('node_tokens', 'model', { from: FROM, to: new Date('2026-01-01T00:10:00Z') }),
      [],
    )
    await assert.rejects(om.meters.listGroupByValues('node_tokens', 'region', { from: FROM, to: TO }), (error) => {
      assert.equal(error.status, 400)
      assert.match(error.message, /'region' is not a groupBy key of meter 'node_tokens' \(its keys: model, type\)/)
      return true
    })

    // The SDK has no method for listMeterSubjects; its typed openapi-fetch client has the path.
    const subjects = async (from, to) => {
      const resp = await om.client.GET('/api/v1/meters/{meterIdOrSlug}/subjects', {
        params: { path: { meterIdOrSlug: 'node_tokens' }, query: { from, to } },
      })
      assert.equal(resp.response.status, 200)
      return resp.data
    }
    assert.deepEqual(await subjects(FROM, TO), ['node-acme-prod', 'node-other'])
    assert.deepEqual(await subjects(HOUR_1, TO), ['node-other'])
    assert.deepEqual(await subjects(TO, new Date('2026-01-02T00:00:00Z')), [])
  })

  await t.test('meters.query and queryPost: advancedMeterGroupByFilters', async () => {
    // GET: the SDK sends the parameter as given, so it is JSON text, as OpenMeter's spec has it.
    const gpt = await om.meters.query('node_tokens', {
      from: FROM,
      to: TO,
      advancedMeterGroupByFilters: JSON.stringify({ model: { $eq: 'gpt' } }),
    })
    assert.deepEqual(rows(gpt), [{ windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-01T02:00:00Z', value: 10 }])

    const inputs = await om.meters.query('node_tokens', {
      from: FROM,
      to: TO,
      windowSize: 'HOUR',
      groupBy: ['model'],
      advancedMeterGroupByFilters: JSON.stringify({ model: { $in: ['gpt', 'claude'] }, type: { $eq: 'input' } }),
    })
    assert.deepEqual(rows(inputs), [
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-01T01:00:00Z', value: 10, groupBy: { model: 'gpt' } },
      { windowStart: '2026-01-01T01:00:00Z', windowEnd: '2026-01-01T02:00:00Z', value: 7, groupBy: { model: 'claude' } },
    ])

    // POST: filter objects in the JSON body.
    const notGpt = await om.meters.queryPost('node_tokens', {
      from: FROM.toISOString(),
      to: TO.toISOString(),
      groupBy: ['type'],
      advancedMeterGroupByFilters: { model: { $ne: 'gpt' } },
    })
    assert.deepEqual(rows(notGpt), [
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-01T02:00:00Z', value: 2.5, groupBy: { type: 'output' } },
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-01T02:00:00Z', value: 7, groupBy: { type: 'input' } },
    ])
    const output = await om.meters.queryPost('node_tokens', {
      from: FROM.toISOString(),
      to: TO.toISOString(),
      subject: ['node-acme-prod'],
      advancedMeterGroupByFilters: { type: { $in: ['output', 'refund'] } },
    })
    // A subject filter also groups by subject, as in OpenMeter.
    assert.deepEqual(rows(output), [
      { windowStart: '2026-01-01T00:00:00Z', windowEnd: '2026-01-01T02:00:00Z', value: 2.5, subject: 'node-acme-prod' },
    ])

    await assert.rejects(
      om.meters.queryPost('node_tokens', {
        from: FROM.toISOString(),
        to: TO.toISOString(),
        advancedMeterGroupByFilters: { region: { $eq: 'eu' } },
      }),
      (error) => {
        assert.equal(error.status, 400)
        assert.match(error.message, /advancedMeterGroupByFilters\.region: 'region' is not a groupBy key/)
        return true
      },
    )
  })

  await t.test('meters.list: page, pageSize, order, orderBy, includeDeleted', async () => {
    for (const [slug, name] of [
      ['node_page_a', 'Page 3'],
      ['node_page_b', 'Page 2'],
      ['node_page_c', 'Page 1'],
    ]) {
      await om.meters.create({ slug, name, eventType: 'node_page', aggregation: 'COUNT' })
    }
    await om.meters.delete('node_page_b')
    const slugs = async (query) => (await om.meters.list({ params: { query } })).map((m) => m.slug)

    assert.deepEqual(await slugs({}), ['node_page_a', 'node_page_c', 'node_tokens'])
    assert.deepEqual(await slugs({ order: 'DESC' }), ['node_tokens', 'node_page_c', 'node_page_a'])
    // Names: 'Node tokens (by model and type)' < 'Page 1' < 'Page 3'.
    assert.deepEqual(await slugs({ orderBy: 'name', order: 'DESC' }), ['node_page_a', 'node_page_c', 'node_tokens'])
    assert.deepEqual(await slugs({ includeDeleted: true }), ['node_page_a', 'node_page_b', 'node_page_c', 'node_tokens'])

    const pages = []
    for (let page = 1; page <= 3; page++) pages.push(await slugs({ page, pageSize: 2 }))
    assert.deepEqual(pages, [['node_page_a', 'node_page_c'], ['node_tokens'], []])
    const withDeleted = []
    for (let page = 1; page <= 2; page++) withDeleted.push(await slugs({ page, pageSize: 2, includeDeleted: true }))
    assert.deepEqual(withDeleted, [
      ['node_page_a', 'node_page_b'],
      ['node_page_c', 'node_tokens'],
    ])

    const newest = await om.meters.list({
      params: { query: { page: 1, pageSize: 2, orderBy: 'createdAt', order: 'DESC', includeDeleted: true } },
    })
    assert.deepEqual(
      newest.map((m) => m.slug),
      ['node_page_c', 'node_page_b'],
    )
    assert.ok(newest[1].deletedAt instanceof Date, 'a deleted meter is listed with deletedAt')
    assert.equal(newest[0].deletedAt, undefined)

    await assert.rejects(om.meters.list({ params: { query: { pageSize: 0 } } }), (error) => error.status === 400)
    await om.meters.delete('node_page_a')
    await om.meters.delete('node_page_c')
  })

  await t.test('info.listCurrencies', async () => {
    const currencies = await om.info.listCurrencies()
    const codes = currencies.map((c) => c.code)
    assert.deepEqual(codes, [...new Set(codes)].sort())
    const byCode = Object.fromEntries(currencies.map((c) => [c.code, c]))
    assert.deepEqual(byCode.USD, { code: 'USD', name: 'US Dollar', symbol: '$', subunits: 2 })
    assert.deepEqual(byCode.EUR, { code: 'EUR', name: 'Euro', symbol: '€', subunits: 2 })
    assert.deepEqual(byCode.JPY, { code: 'JPY', name: 'Japanese Yen', symbol: '¥', subunits: 0 })
    assert.equal(byCode.KWD.subunits, 3)
    assert.equal(byCode.DEM, undefined, 'historic currencies are not listed')
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

  await t.test('events.listV2: filter JSON, cursor pages', async () => {
    const start = Date.parse('2026-02-01T00:00:00Z')
    const id = (i) => `node-v2-${String(i).padStart(2, '0')}`
    const subjectOf = (i) => (i % 4 === 0 ? 'node-v2-other' : 'node-acme-prod')
    await om.events.ingest(
      Array.from({ length: 12 }, (_, i) => ({
        id: id(i),
        source: 'node-test',
        type: 'node_v2',
        subject: subjectOf(i),
        time: new Date(start + i * 60_000),
        data: { n: i },
      })),
    )
    const newestFirst = Array.from({ length: 12 }, (_, i) => id(11 - i))
    // The filter goes as JSON text: the SDK's query serializer would send an object as deepObject.
    const ofType = { type: { $eq: 'node_v2' } }

    // Follow nextCursor until a page comes without one; a full last page is followed by an empty one.
    const walk = async (limit, filter) => {
      const pages = []
      let cursor
      do {
        const page = await om.events.listV2({
          limit,
          clientId: 'node-v2-walk',
          filter: JSON.stringify(filter),
          ...(cursor ? { cursor } : {}),
        })
        pages.push(page.items.map((item) => item.event.id))
        cursor = page.nextCursor
      } while (cursor)
      return pages
    }
    const byFive = await walk(5, ofType)
    assert.deepEqual(
      byFive.map((page) => page.length),
      [5, 5, 2],
    )
    assert.deepEqual(byFive.flat(), newestFirst)
    const byFour = await walk(4, ofType)
    assert.deepEqual(
      byFour.map((page) => page.length),
      [4, 4, 4, 0],
    )
    assert.deepEqual(byFour.flat(), newestFirst)

    const all = await om.events.listV2({ limit: 100, filter: JSON.stringify(ofType) })
    assert.equal(all.nextCursor, undefined)
    const seventh = all.items.find((item) => item.event.id === 'node-v2-07')
    assert.equal(seventh.customerId, acme.id)
    assert.equal(iso(seventh.event.time), '2026-02-01T00:07:00Z')
    assert.deepEqual(seventh.event.data, { n: 7 })
    assert.ok(seventh.ingestedAt instanceof Date && seventh.storedAt instanceof Date)
    assert.equal(all.items.find((item) => item.event.id === 'node-v2-08').customerId, undefined)

    const acmeIds = newestFirst.filter((_, k) => subjectOf(11 - k) === 'node-acme-prod')
    assert.deepEqual((await walk(3, { ...ofType, customerId: { $in: ['node-acme'] } })).flat(), acmeIds)
    assert.deepEqual((await walk(100, { ...ofType, subject: { $eq: 'node-v2-other' } })).flat(), [
      'node-v2-08',
      'node-v2-04',
      'node-v2-00',
    ])
    const window = { ...ofType, time: { $and: [{ $gte: '2026-02-01T00:03:00Z' }, { $lt: '2026-02-01T00:06:00Z' }] } }
    assert.deepEqual((await walk(100, window)).flat(), ['node-v2-05', 'node-v2-04', 'node-v2-03'])

    await assert.rejects(
      om.events.listV2({ filter: JSON.stringify({ subject: { $regex: 'node.*' } }) }),
      (error) => {
        assert.equal(error.status, 400)
        assert.match(error.message, /filter\.subject: unknown operator '\$regex'/)
        return true
      },
    )
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

    // OpenMeter's docs spell the options successUrl, clientReferenceId (Go matches names without case).
    const spelled = await om.apps.stripe.createCheckoutSession({
      customer: { key: 'node-acme' },
      options: {
        successUrl: 'https://app.example.com/billing/done',
        cancelUrl: 'https://app.example.com/billing/cancelled',
        clientReferenceId: 'node-2',
      },
    })
    assert.equal(spelled.successURL, 'https://app.example.com/billing/done')
    assert.equal(spelled.cancelURL, 'https://app.example.com/billing/cancelled')
    assert.equal(spelled.clientReferenceId, 'node-2')
    assert.equal(spelled.stripeCustomerId, stripeCustomerId)
    result.spelled = spelled.sessionId

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
