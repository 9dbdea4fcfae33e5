// The real @neondatabase/serverless driver (and drizzle-orm/neon-http on top of it) against makenaide-core's
// POST /sql, as README "SQL-over-HTTP drivers (Neon)" tells a Node function to set it up. Values come back through
// the driver's own pg-types parsers, so each assertion is on the JS value a caller gets.
//
// Started by tests/tests/neon_driver.rs, which runs the real extension against a throwaway PostgreSQL database and
// passes MAKENAIDE_SQL_URL (http://127.0.0.1:<port>/sql) and MAKENAIDE_CORE_TOKEN, with TZ=UTC.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NeonDbError } from '@neondatabase/serverless';

const endpoint = process.env.MAKENAIDE_SQL_URL;
const token = process.env.MAKENAIDE_CORE_TOKEN;
assert.ok(endpoint && token, 'MAKENAIDE_SQL_URL and MAKENAIDE_CORE_TOKEN must be set');

// --- README "SQL-over-HTTP drivers (Neon)" setup, as written there ---
import { neon, neonConfig } from '@neondatabase/serverless';

neonConfig.fetchEndpoint = `http://127.0.0.1:${process.env.MAKENAIDE_CORE_PORT ?? 4571}/sql`;
neonConfig.fetchFunction = (url, init) =>
  fetch(url, {
    ...init,
    headers: { ...init.headers, 'X-Makenaide-Token': process.env.MAKENAIDE_CORE_TOKEN || process.env.AWS_SESSION_TOKEN },
  });
const sql = neon('postgresql://lambda@localhost/makenaide'); // required by the driver, ignored by the extension
// --- end of the README setup ---

test('the README setup addresses the extension', () => {
  assert.equal(neonConfig.fetchEndpoint, endpoint);
});

test('type cases come back as the driver parses PostgreSQL text', async () => {
  const [r] = await sql.query(
    `select $1::bool b, $2::int2 s, $3::int4 i, $4::int8 l, $5::float4 f, $6::float8 d, $7::numeric n,
            $8::text t, $9::varchar v, $10::jsonb j, $11::json js, $12::uuid u, $13::date dt,
            $14::timestamp ts, $15::timestamptz tz, $16::bytea by, $17::time tm, $18::int4[] ia, $19::text[] ta,
            $20::interval iv, null::text nl, $21::timestamptz[] tza, '{{1,2},{3,4}}'::int8[] m, '{}'::text[] e,
            $22::numeric[] na, $23::bool[] ba, $24::jsonb[] ja, 'NaN'::float8 nan, '-Infinity'::float4 ninf,
            $25::float8 tiny, $26::bytea[] bya, $27::uuid[] ua`,
    [true, 7, 70000, '9007199254740993', 1.5, 2.25, '123456789012345678901234567890.000000001',
      'héllo', 'v', { a: [1, 'x'] }, JSON.stringify([1, 2]), 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
      new Date('2024-01-31T09:00:00.123Z'), '2024-01-31T09:00:00+09:00', Buffer.from([0, 255]), '09:30:00',
      [1, null, 3], ['a b', 'x"y', 'NULL', '', 'back\\slash', '{}', 'plain'], '1 year 2 mons 3 days 04:05:06.5',
      [new Date('2020-01-01T00:00:00Z'), null], ['1.10', '-2'], [true, false], [{ k: 'v' }, { n: 1 }],
      1.5e-7, [Buffer.from('hi')], ['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']],
  );
  assert.equal(r.b, true);
  assert.equal(r.s, 7);
  assert.equal(r.i, 70000);
  assert.equal(r.l, '9007199254740993'); // int8 stays a string (pg-types), every digit kept
  assert.equal(r.f, 1.5);
  assert.equal(r.d, 2.25);
  assert.equal(r.n, '123456789012345678901234567890.000000001');
  assert.equal(r.t, 'héllo');
  assert.equal(r.v, 'v');
  assert.deepEqual(r.j, { a: [1, 'x'] });
  assert.deepEqual(r.js, [1, 2]);
  assert.equal(r.u, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
  assert.ok(r.dt instanceof Date && r.dt.toISOString() === '2024-02-29T00:00:00.000Z', `${r.dt}`);
  assert.equal(r.ts.toISOString(), '2024-01-31T09:00:00.123Z');
  assert.equal(r.tz.toISOString(), '2024-01-31T00:00:00.000Z');
  assert.ok(Buffer.isBuffer(r.by) && r.by.equals(Buffer.from([0, 255])), `${r.by}`);
  assert.equal(r.tm, '09:30:00');
  assert.deepEqual(r.ia, [1, null, 3]);
  assert.deepEqual(r.ta, ['a b', 'x"y', 'NULL', '', 'back\\slash', '{}', 'plain']);
  assert.deepEqual(
    { ...r.iv },
    { years: 1, months: 2, days: 3, hours: 4, minutes: 5, seconds: 6, milliseconds: 500 },
  );
  assert.equal(r.nl, null);
  assert.deepEqual(r.tza.map((d) => d && d.toISOString()), ['2020-01-01T00:00:00.000Z', null]);
  assert.deepEqual(r.m, [['1', '2'], ['3', '4']]);
  assert.deepEqual(r.e, []);
  assert.deepEqual(r.na, [1.1, -2]); // pg-types parses numeric[] elements as floats (numeric alone stays text)
  assert.deepEqual(r.ba, [true, false]);
  assert.deepEqual(r.ja, [{ k: 'v' }, { n: 1 }]);
  assert.ok(Number.isNaN(r.nan));
  assert.equal(r.ninf, -Infinity);
  assert.equal(r.tiny, 1.5e-7);
  assert.ok(r.bya[0].equals(Buffer.from('hi')), `${r.bya}`);
  assert.deepEqual(r.ua, ['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11']);
});

test('full results carry command, rowCount and fields; array mode gives arrays', async () => {
  const full = await sql.query('select 1::int4 as one, $1::text as two', ['x'], { fullResults: true });
  assert.equal(full.command, 'SELECT');
  assert.equal(full.rowCount, 1);
  assert.deepEqual(full.fields.map((f) => [f.name, f.dataTypeID]), [['one', 23], ['two', 25]]);
  assert.deepEqual(full.rows, [{ one: 1, two: 'x' }]);
  assert.deepEqual(await sql.query('select 1 a, 2 b', [], { arrayMode: true }), [[1, 2]]);
  // The tagged template binds its values as parameters (never interpolated).
  const evil = "x'); drop table nothing; --";
  assert.deepEqual(await sql`select ${evil}::text as s`, [{ s: evil }]);
});

test('a batch is one transaction with its isolation, read-only and deferrable settings', async () => {
  await sql.transaction([
    sql`create table items (id serial primary key, name text unique not null, qty int4 not null)`,
    sql`insert into items (name, qty) values ('apple', 3), ('pear', 5)`,
  ]);
  const [ins, sel] = await sql.transaction(
    [sql`insert into items (name, qty) values (${'plum'}, ${7})`, sql`select name, qty from items order by id`],
    { isolationLevel: 'RepeatableRead', fullResults: true },
  );
  assert.equal(ins.command, 'INSERT');
  assert.equal(ins.rowCount, 1);
  assert.deepEqual(sel.rows.map((r) => r.name), ['apple', 'pear', 'plum']);

  const [[settings]] = await sql.transaction(
    [sql`select current_setting('transaction_isolation') iso, current_setting('transaction_read_only') ro,
                current_setting('transaction_deferrable') df`],
    { isolationLevel: 'Serializable', readOnly: true, deferrable: true },
  );
  assert.deepEqual(settings, { iso: 'serializable', ro: 'on', df: 'on' });
  // PostgreSQL runs READ UNCOMMITTED as READ COMMITTED; the extension asks for what it will get.
  const [[dirty]] = await sql.transaction([sql`select current_setting('transaction_isolation') iso`], {
    isolationLevel: 'ReadUncommitted',
  });
  assert.equal(dirty.iso, 'read committed');

  await assert.rejects(
    sql.transaction([sql`update items set qty = 0`], { readOnly: true }),
    (e) => e instanceof NeonDbError && e.code === '25006',
  );
  // The first error rolls the whole batch back.
  await assert.rejects(
    sql.transaction([sql`delete from items`, sql`select 1/0`]),
    (e) => e instanceof NeonDbError && e.code === '22012',
  );
  assert.deepEqual(await sql`select count(*)::int4 n from items`, [{ n: 3 }]);
});

test('PostgreSQL errors reach the driver with their fields', async () => {
  const err = await sql`insert into items (name, qty) values ('apple', 1)`.catch((e) => e);
  assert.ok(err instanceof NeonDbError, `${err}`);
  assert.equal(err.code, '23505');
  assert.equal(err.severity, 'ERROR');
  assert.equal(err.constraint, 'items_name_key');
  assert.equal(err.table, 'items');
  assert.equal(err.schema, 'public');
  assert.equal(err.detail, 'Key (name)=(apple) already exists.');
  assert.match(err.message, /duplicate key value violates unique constraint "items_name_key"/);

  const syntax = await sql.query('select * fromm items').catch((e) => e);
  assert.equal(syntax.code, '42601');
  assert.equal(syntax.position, '10');

  const nulls = await sql`insert into items (name) values ('fig')`.catch((e) => e);
  assert.equal(nulls.code, '23502');
  assert.equal(nulls.column, 'qty');
});

test('fetchOptions.headers would replace the driver\'s own Neon-* headers (README: use fetchFunction)', async () => {
  const replaced = neon('postgresql://lambda@localhost/makenaide', { fetchOptions: { headers: { 'X-Makenaide-Token': token } } });
  // Without Neon-Array-Mode the rows come back as objects, which the driver (expecting arrays) cannot read.
  await assert.rejects(replaced`select 1 as one`, TypeError);
});

test('drizzle-orm/neon-http queries through the same driver', async () => {
  const { drizzle } = await import('drizzle-orm/neon-http');
  const { pgTable, serial, text, integer } = await import('drizzle-orm/pg-core');
  const { eq, gt } = await import('drizzle-orm');
  const items = pgTable('items', { id: serial('id').primaryKey(), name: text('name').notNull(), qty: integer('qty').notNull() });
  const db = drizzle({ client: sql });
  const inserted = await db.insert(items).values({ name: 'kiwi', qty: 9 }).returning({ id: items.id, name: items.name });
  assert.equal(inserted.length, 1);
  assert.equal(inserted[0].name, 'kiwi');
  assert.equal(typeof inserted[0].id, 'number');
  const rows = await db.select({ name: items.name, qty: items.qty }).from(items).where(gt(items.qty, 4)).orderBy(items.qty);
  assert.deepEqual(rows, [{ name: 'pear', qty: 5 }, { name: 'plum', qty: 7 }, { name: 'kiwi', qty: 9 }]);
  const updated = await db.update(items).set({ qty: 10 }).where(eq(items.name, 'kiwi')).returning({ qty: items.qty });
  assert.deepEqual(updated, [{ qty: 10 }]);
});
