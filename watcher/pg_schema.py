"""The store's schema on PostgreSQL: the same versions as watcher.store.MIGRATIONS, each written for it.

The tables, columns and indexes are SQLite's, so one set of queries serves both. What differs:
- Types: BIGINT for INTEGER (ids, heights, amounts of base units stay TEXT as in SQLite), BYTEA for BLOB,
  DOUBLE PRECISION for REAL.
- Ids. SQLite gives a plain INTEGER PRIMARY KEY (addresses) the largest id + 1 when the insert leaves it
  NULL, and an AUTOINCREMENT one (deposits, outbox, events, payments) max(counter, largest id) + 1 with
  the counter raised by any explicit id (the ledger inserts deposits with ids it planned). Two BEFORE
  INSERT triggers do the same here: `rowid_id` for addresses, `autoincrement_id` with a sequence per
  table (the sequence is raised to an explicit id above it, so no id is ever given twice). attempts and
  watch_changes never get an explicit id: identity columns.
- Version 3 alters the outbox in place (SQLite has to rebuild it: no DROP NOT NULL there).
The version is the one row of `schema_version` (SQLite keeps it in `PRAGMA user_version`).
"""

from __future__ import annotations

# Held (transaction-scoped) by every write transaction and by the migration: writes of several processes
# to one database run one at a time, as SQLite's BEGIN IMMEDIATE makes them.
WRITE_LOCK_KEY = 0x64_77_73_74_6F_72_65  # "dwstore"

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"

PG_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE FUNCTION rowid_id() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- The largest id + 1, as SQLite gives a NULL INTEGER PRIMARY KEY; a row-level BEFORE trigger sees
        -- the rows its statement inserted before this one.
        IF NEW.id IS NULL THEN
            EXECUTE format('SELECT coalesce(max(id), 0) + 1 FROM %I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME)
                INTO NEW.id;
        END IF;
        RETURN NEW;
    END $$;
    CREATE FUNCTION autoincrement_id() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        seq regclass := TG_ARGV[0]::regclass;
    BEGIN
        IF NEW.id IS NULL THEN
            NEW.id := nextval(seq);
        ELSIF NEW.id > coalesce(pg_sequence_last_value(seq), 0) THEN
            PERFORM setval(seq, NEW.id);
        END IF;
        RETURN NEW;
    END $$;
    CREATE TABLE chains (
        name TEXT PRIMARY KEY,
        identity TEXT,
        cursor_height BIGINT,
        cursor_hash TEXT,
        halted_reason TEXT,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE blocks (
        chain TEXT NOT NULL,
        height BIGINT NOT NULL,
        block_hash TEXT NOT NULL,
        parent_hash TEXT NOT NULL,
        PRIMARY KEY (chain, height)
    );
    CREATE TABLE addresses (
        id BIGINT PRIMARY KEY,
        chain TEXT NOT NULL,
        currency TEXT NOT NULL,
        watch_key BYTEA NOT NULL,
        address TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 1,
        UNIQUE (currency, watch_key)
    );
    CREATE TRIGGER addresses_id BEFORE INSERT ON addresses FOR EACH ROW WHEN (NEW.id IS NULL)
        EXECUTE FUNCTION rowid_id();
    CREATE SEQUENCE deposits_id_seq;
    CREATE TABLE deposits (
        id BIGINT PRIMARY KEY,
        chain TEXT NOT NULL,
        currency TEXT NOT NULL,
        address_id BIGINT NOT NULL REFERENCES addresses(id),
        txid TEXT NOT NULL,
        tx_index BIGINT NOT NULL,
        amount TEXT NOT NULL,
        block_height BIGINT,
        block_hash TEXT,
        confirmations BIGINT NOT NULL,
        status TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        sender TEXT,
        nonce BIGINT,
        inputs TEXT NOT NULL DEFAULT '',
        first_seen_at DOUBLE PRECISION NOT NULL,
        orphaned_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL,
        UNIQUE (chain, txid, currency, address_id, tx_index)
    );
    CREATE TRIGGER deposits_id BEFORE INSERT ON deposits FOR EACH ROW
        EXECUTE FUNCTION autoincrement_id('deposits_id_seq');
    CREATE INDEX deposits_open ON deposits (chain, status) WHERE status = 'not_confirmed';
    CREATE INDEX deposits_block ON deposits (chain, block_height);
    CREATE SEQUENCE outbox_id_seq;
    CREATE TABLE outbox (
        id BIGINT PRIMARY KEY,
        deposit_id BIGINT NOT NULL REFERENCES deposits(id),
        status TEXT NOT NULL,
        body BYTEA NOT NULL,
        state TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        first_attempt_at DOUBLE PRECISION,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        delivered_at DOUBLE PRECISION
    );
    CREATE TRIGGER outbox_id BEFORE INSERT ON outbox FOR EACH ROW
        EXECUTE FUNCTION autoincrement_id('outbox_id_seq');
    CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state = 'pending';
    CREATE INDEX outbox_deposit ON outbox (deposit_id, id);
    CREATE TABLE attempts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        outbox_id BIGINT NOT NULL REFERENCES outbox(id),
        attempted_at DOUBLE PRECISION NOT NULL,
        duration_ms DOUBLE PRECISION NOT NULL,
        http_status BIGINT,
        error TEXT NOT NULL,
        response_excerpt TEXT NOT NULL
    );
    CREATE INDEX attempts_outbox ON attempts (outbox_id);
    """,
    # 2: integrations and the merchant API (see MIGRATIONS[1]).
    """
    ALTER TABLE addresses ADD COLUMN integration_id TEXT NOT NULL
        DEFAULT '00000000-0000-0000-0000-000000000000';
    ALTER TABLE addresses ADD COLUMN source TEXT NOT NULL DEFAULT 'config';
    ALTER TABLE addresses ADD COLUMN key_id TEXT;
    ALTER TABLE addresses ADD COLUMN key_index BIGINT;
    ALTER TABLE addresses ADD COLUMN derivation_path TEXT;
    ALTER TABLE addresses ADD COLUMN created_at DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE addresses ADD COLUMN scan_from BIGINT;
    CREATE INDEX addresses_integration ON addresses (integration_id, id);
    CREATE INDEX addresses_foreign ON addresses (integration_id, foreign_id);
    CREATE INDEX addresses_scan ON addresses (chain) WHERE scan_from IS NOT NULL;
    CREATE INDEX addresses_config ON addresses (chain) WHERE source = 'config';
    CREATE TABLE public_keys (
        key_id TEXT PRIMARY KEY,
        integration_id TEXT NOT NULL,
        chain TEXT NOT NULL,
        descriptor TEXT NOT NULL,
        first_used_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE derivations (
        integration_id TEXT NOT NULL,
        chain TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        key_id TEXT NOT NULL REFERENCES public_keys(key_id),
        key_index BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (integration_id, chain, foreign_id)
    );
    CREATE UNIQUE INDEX derivations_index ON derivations (key_id, key_index);
    CREATE SEQUENCE events_id_seq;
    CREATE TABLE events (
        id BIGINT PRIMARY KEY,
        integration_id TEXT NOT NULL,
        deposit_id BIGINT NOT NULL REFERENCES deposits(id),
        status TEXT NOT NULL,
        confirmations BIGINT NOT NULL,
        body BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TRIGGER events_id BEFORE INSERT ON events FOR EACH ROW
        EXECUTE FUNCTION autoincrement_id('events_id_seq');
    CREATE INDEX events_integration ON events (integration_id, id);
    CREATE TABLE watch_changes (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        address_id BIGINT NOT NULL REFERENCES addresses(id)
    );
    """,
    # 3: payments for orders, and their webhooks in the outbox (see MIGRATIONS[2]).
    """
    CREATE SEQUENCE payments_id_seq;
    CREATE TABLE payments (
        id BIGINT PRIMARY KEY,
        reference TEXT NOT NULL UNIQUE,
        integration_id TEXT NOT NULL,
        chain TEXT NOT NULL,
        currency TEXT NOT NULL,
        address_id BIGINT NOT NULL REFERENCES addresses(id),
        amount TEXT NOT NULL,
        received TEXT NOT NULL DEFAULT '0',
        status TEXT NOT NULL,
        customer_email TEXT,
        customer_reference TEXT,
        meta_data TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION,
        blind_at_link DOUBLE PRECISION,
        idempotency_key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        UNIQUE (integration_id, idempotency_key)
    );
    CREATE TRIGGER payments_id BEFORE INSERT ON payments FOR EACH ROW
        EXECUTE FUNCTION autoincrement_id('payments_id_seq');
    CREATE INDEX payments_integration ON payments (integration_id, id);
    CREATE INDEX payments_open ON payments (chain, expires_at) WHERE status IN ('pending', 'linked');
    CREATE INDEX payments_address ON payments (address_id);
    ALTER TABLE outbox ALTER COLUMN deposit_id DROP NOT NULL;
    ALTER TABLE outbox ADD COLUMN payment_id BIGINT REFERENCES payments(id);
    ALTER TABLE outbox ADD CONSTRAINT outbox_subject CHECK ((deposit_id IS NULL) != (payment_id IS NULL));
    DROP INDEX outbox_deposit;
    CREATE INDEX outbox_deposit ON outbox (deposit_id, id) WHERE deposit_id IS NOT NULL;
    CREATE INDEX outbox_payment ON outbox (payment_id, id) WHERE payment_id IS NOT NULL;
    CREATE TABLE seen_clocks (
        chain TEXT PRIMARY KEY,
        at_head DOUBLE PRECISION,
        blind_s DOUBLE PRECISION NOT NULL
    );
    """,
    # 4: the back office's searches and one address's deposits (see MIGRATIONS[3]).
    """
    CREATE INDEX deposits_address ON deposits (address_id, id);
    CREATE INDEX payments_customer_reference ON payments (customer_reference)
        WHERE customer_reference IS NOT NULL;
    CREATE INDEX payments_customer_email ON payments (customer_email) WHERE customer_email IS NOT NULL;
    """,
)

# Not a schema version: the server-side half of the batched writes (store_pg.PgTransaction's deferred
# operations), replaced at every open (CREATE OR REPLACE, under the migration's lock), so a program always
# runs its own definition and both backends keep the same versions. It takes the operations one
# transaction deferred, in the order they were made, as one JSON array (jsonb: parsed once, whatever the
# number of fields read), and runs each as one set-based statement (or a few) in that order, as
# StoreTransaction's statements would have: the whole block batch is then one statement sent with the
# COMMIT. Bytes come as bytea's hex text ("\x..."), floats as JSON numbers (the shortest text that reads
# back as the same double). Returns the number of rows written.
APPLY_FUNCTION = r"""
CREATE OR REPLACE FUNCTION dw_apply(ops jsonb) RETURNS bigint LANGUAGE plpgsql
    SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    op jsonb;
    written bigint := 0;
    n bigint;
BEGIN
    FOR op IN SELECT value FROM jsonb_array_elements(ops) LOOP
        CASE op->>'op'
        WHEN 'insert_deposits' THEN
            -- The sequence raised to the largest explicit id first, as the autoincrement_id trigger would
            -- leave it: the trigger then has no setval to do a row.
            PERFORM setval('deposits_id_seq', (op->>'max_id')::bigint)
            WHERE (op->>'max_id')::bigint > coalesce(pg_sequence_last_value('deposits_id_seq'), 0);
            INSERT INTO deposits (id, chain, currency, address_id, txid, tx_index, amount, block_height,
                block_hash, confirmations, status, error, sender, nonce, inputs, first_seen_at, orphaned_at,
                updated_at)
            SELECT id, chain, currency, address_id, txid, tx_index, amount, block_height, block_hash,
                confirmations, status, error, sender, nonce, inputs, first_seen_at, orphaned_at, updated_at
            FROM jsonb_populate_recordset(NULL::deposits, op->'rows');
            GET DIAGNOSTICS n = ROW_COUNT;
        WHEN 'update_deposits' THEN
            UPDATE deposits d SET block_height = r.block_height, block_hash = r.block_hash,
                confirmations = r.confirmations, status = r.status, error = r.error,
                orphaned_at = r.orphaned_at, updated_at = r.updated_at
            FROM jsonb_populate_recordset(NULL::deposits, op->'rows') r WHERE d.id = r.id;
            GET DIAGNOSTICS n = ROW_COUNT;
        WHEN 'queue' THEN
            -- StoreTransaction._queue: supersede the deposits' undelivered callbacks, queue the new ones
            -- (in the planned order: ids follow it), and add every change to the event feed.
            UPDATE outbox SET state = 'superseded'
            WHERE deposit_id = ANY(ARRAY(SELECT jsonb_array_elements_text(op->'deposit_ids'))::bigint[])
                AND state IN ('pending', 'failed');
            GET DIAGNOSTICS n = ROW_COUNT;
            written := written + n;
            -- One pass over the callbacks (their bytes decoded once) for both inserts.
            WITH c AS MATERIALIZED (
                SELECT c.ordinality, d.id, c.status, c.body, c.state, c.confirmations, c.queued_at,
                    a.integration_id, a.source != 'payment' AND a.integration_id
                        <> ALL(ARRAY(SELECT jsonb_array_elements_text(op->'quiet'))) AS told
                FROM ROWS FROM (jsonb_to_recordset(op->'callbacks') AS (deposit_id bigint, status text,
                        body bytea, state text, confirmations bigint, queued_at double precision))
                        WITH ORDINALITY c
                    JOIN deposits d ON d.id = c.deposit_id JOIN addresses a ON a.id = d.address_id
            ), queued AS (
                INSERT INTO outbox (deposit_id, status, body, state, created_at, next_attempt_at)
                SELECT id, status, body, state, queued_at, queued_at FROM c WHERE told ORDER BY ordinality
                RETURNING 1
            ), logged AS (
                INSERT INTO events (integration_id, deposit_id, status, confirmations, body, created_at)
                SELECT integration_id, id, status, confirmations, body, queued_at FROM c ORDER BY ordinality
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM queued) + (SELECT count(*) FROM logged) INTO n;
        WHEN 'blocks' THEN
            INSERT INTO blocks (chain, height, block_hash, parent_hash)
            SELECT op->>'chain', r.height, r.block_hash, r.parent_hash
            FROM jsonb_to_recordset(op->'rows') AS r(height bigint, block_hash text, parent_hash text)
            ON CONFLICT (chain, height) DO UPDATE SET block_hash = excluded.block_hash,
                parent_hash = excluded.parent_hash;
            GET DIAGNOSTICS n = ROW_COUNT;
            written := written + n;
            DELETE FROM blocks WHERE chain = op->>'chain' AND height <= (op->>'below')::bigint;
            GET DIAGNOSTICS n = ROW_COUNT;
        WHEN 'cursor' THEN
            INSERT INTO chains (name, cursor_height, cursor_hash, updated_at)
            VALUES (op->>'chain', (op->>'height')::bigint, op->>'block_hash', (op->>'at')::double precision)
            ON CONFLICT (name) DO UPDATE SET cursor_height = excluded.cursor_height,
                cursor_hash = excluded.cursor_hash, updated_at = excluded.updated_at;
            GET DIAGNOSTICS n = ROW_COUNT;
        ELSE
            RAISE EXCEPTION 'dw_apply: unknown operation %', op->>'op';
        END CASE;
        written := written + n;
    END LOOP;
    RETURN written;
END $fn$;
"""
