-- The warehouse schema: one DDL for chDB (embedded) and a ClickHouse server.
-- `{db}` is replaced by the database name; statements are separated by lines holding only ';'.
--
-- Shape: the loader inserts one row per document into `documents` (the raw frames, their header's
-- device token zeroed: tokens live in PostgreSQL only, plus the decoded receipt, its lines as
-- parallel arrays, and the shift close's two Z reports). Every
-- other table is filled by a materialized view from that one insert, so a batch is one INSERT
-- statement and its rows land (or not) together. Exactly once is by document identity
-- (device_id, document_id): the loader drops rows whose identity the warehouse already holds
-- before inserting, because materialized views aggregate what is inserted and cannot undo a
-- duplicate; ReplacingMergeTree on `documents` is only the backstop for the raw rows.
--
-- Partitioned by month of the document's own time (a resent document keeps its time, so both
-- copies fall into one partition); ordered by device and time for per-device, per-period reads.
-- Money is in tiyn (Int64). Times are the device's wall clock, stored as DateTime('UTC').

CREATE DATABASE IF NOT EXISTS {db}
;
CREATE TABLE IF NOT EXISTS {db}.documents
(
    device_id UInt32,
    document_id String,
    organization_id UInt64,
    trade_point_id UInt64,
    command UInt8,
    protocol_version UInt16,
    gateway_id LowCardinality(String),
    received_at DateTime64(6, 'UTC'),
    loaded_at DateTime64(6, 'UTC'),
    document_time DateTime('UTC'),
    shift_number UInt32,
    request_number UInt32,
    fiscal_sign String,
    offline UInt8,
    printed_number UInt64,
    offline_number UInt32,
    operation Int8,
    total Int64,
    revenue Int64,
    item_type Array(UInt8),
    item_name Array(String),
    item_section Array(String),
    item_quantity Array(UInt64),
    item_price Array(Int64),
    item_sum Array(Int64),
    payment_type Array(UInt8),
    payment_sum Array(Int64),
    tax_type Array(UInt16),
    tax_percent Array(UInt32),
    tax_turnover Array(Int64),
    tax_sum Array(Int64),
    report_type Int8,
    withdraw_money UInt8,
    device_report String,
    ofd_report String,
    differences Array(String),
    placement_kind Int8,
    placement_sum Int64,
    request_frame String,
    response_frame String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(document_time)
ORDER BY (device_id, document_time, document_id)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE TABLE IF NOT EXISTS {db}.receipts
(
    device_id UInt32,
    document_id String,
    document_time DateTime('UTC'),
    shift_number UInt32,
    operation Int8,
    total Int64,
    revenue Int64,
    offline UInt8,
    fiscal_sign String,
    printed_number UInt64,
    offline_number UInt32,
    received_at DateTime64(6, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(document_time)
ORDER BY (device_id, document_time, document_id)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.receipts_mv TO {db}.receipts AS
SELECT device_id, document_id, document_time, shift_number, operation, total, revenue, offline,
       fiscal_sign, printed_number, offline_number, received_at
FROM {db}.documents WHERE command = 1
;
CREATE TABLE IF NOT EXISTS {db}.receipt_items
(
    device_id UInt32,
    document_id String,
    document_time DateTime('UTC'),
    line UInt32,
    item_type UInt8,
    name String,
    section String,
    quantity UInt64,
    price Int64,
    sum Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(document_time)
ORDER BY (device_id, document_time, document_id, line)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.receipt_items_mv TO {db}.receipt_items AS
SELECT device_id, document_id, document_time, line, item_type, name, section, quantity, price, sum
FROM {db}.documents
ARRAY JOIN arrayEnumerate(item_type) AS line, item_type AS item_type, item_name AS name,
           item_section AS section, item_quantity AS quantity, item_price AS price,
           item_sum AS sum
WHERE command = 1
;
CREATE TABLE IF NOT EXISTS {db}.receipt_payments
(
    device_id UInt32,
    document_id String,
    document_time DateTime('UTC'),
    payment_type UInt8,
    sum Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(document_time)
ORDER BY (device_id, document_time, document_id, payment_type)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.receipt_payments_mv TO {db}.receipt_payments AS
SELECT device_id, document_id, document_time, payment_type, sum
FROM {db}.documents ARRAY JOIN payment_type AS payment_type, payment_sum AS sum
WHERE command = 1
;
CREATE TABLE IF NOT EXISTS {db}.receipt_taxes
(
    device_id UInt32,
    document_id String,
    document_time DateTime('UTC'),
    operation Int8,
    tax_type UInt16,
    percent UInt32,
    turnover Int64,
    tax Int64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(document_time)
ORDER BY (device_id, document_time, document_id, tax_type, percent)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.receipt_taxes_mv TO {db}.receipt_taxes AS
SELECT device_id, document_id, document_time, operation, tax_type, percent, turnover, tax
FROM {db}.documents
ARRAY JOIN tax_type AS tax_type, tax_percent AS percent, tax_turnover AS turnover,
           tax_sum AS tax
WHERE command = 1
;
-- The public receipt check's lookup: one row per receipt, keyed by what its QR code names (the
-- device, found by the KGD number, then sign, total in tiyn and the device's time as Unix
-- seconds: `device:sign:total:seconds`), holding everything the check page shows as one JSON
-- object (cabinet_reads.COLUMNS). One key column and one value column, in small granules and
-- compression blocks, make a check one point read: a few times cheaper in chDB than the same
-- filter on `documents` (each column read costs, and its granules hold 8192 rows). A resent
-- or replayed receipt has the same key and collapses (a check reads one row either way), so this
-- table needs no deduplication window.
CREATE TABLE IF NOT EXISTS {db}.receipt_checks
(
    check_key String,
    receipt String
)
ENGINE = ReplacingMergeTree
ORDER BY check_key
SETTINGS index_granularity = 128, min_compress_block_size = 2048, max_compress_block_size = 4096
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.receipt_checks_mv TO {db}.receipt_checks AS
SELECT concat(toString(device_id), ':', fiscal_sign, ':', toString(total), ':',
              toString(toUnixTimestamp(document_time))) AS check_key,
       formatRowNoNewline('JSONEachRow', device_id, document_id,
           toString(document_time) AS time, shift_number, printed_number, offline_number,
           operation, total, fiscal_sign, organization_id, trade_point_id, item_name,
           item_quantity, item_price, item_sum, item_type, tax_type, tax_percent, tax_turnover,
           tax_sum, payment_type, payment_sum) AS receipt
FROM {db}.documents WHERE command = 1
;
-- Shift closes with the device's and the OFD's Z reports side by side (flattened to JSON
-- objects of named numbers) and the reconciliation: the named differences, empty when agreed.
CREATE TABLE IF NOT EXISTS {db}.shifts
(
    device_id UInt32,
    shift_number UInt32,
    document_id String,
    close_time DateTime('UTC'),
    offline UInt8,
    withdraw_money UInt8,
    device_z String,
    ofd_z String,
    differences Array(String),
    reconciled UInt8
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(close_time)
ORDER BY (device_id, close_time, shift_number)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.shifts_mv TO {db}.shifts AS
SELECT device_id, shift_number, document_id, document_time AS close_time, offline,
       withdraw_money, device_report AS device_z, ofd_report AS ofd_z, differences,
       toUInt8(empty(differences)) AS reconciled
FROM {db}.documents WHERE command = 2
;
-- X and Z reports a device asked for (REPORT), with the OFD's answer.
CREATE TABLE IF NOT EXISTS {db}.reports
(
    device_id UInt32,
    document_id String,
    report_time DateTime('UTC'),
    shift_number UInt32,
    report_type Int8,
    device_report String,
    ofd_report String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(report_time)
ORDER BY (device_id, report_time, document_id)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.reports_mv TO {db}.reports AS
SELECT device_id, document_id, document_time AS report_time, shift_number, report_type,
       device_report, ofd_report
FROM {db}.documents WHERE command = 3
;
CREATE TABLE IF NOT EXISTS {db}.money_placements
(
    device_id UInt32,
    document_id String,
    document_time DateTime('UTC'),
    shift_number UInt32,
    kind Int8,
    sum Int64,
    offline UInt8
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(document_time)
ORDER BY (device_id, document_time, document_id)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.money_placements_mv TO {db}.money_placements AS
SELECT device_id, document_id, document_time, shift_number, placement_kind AS kind,
       placement_sum AS sum, offline
FROM {db}.documents WHERE command = 6
;
-- Daily revenue and the offline share per device; read with sum() (rows merge lazily).
CREATE TABLE IF NOT EXISTS {db}.daily_device
(
    day Date,
    device_id UInt32,
    receipts UInt64,
    offline_receipts UInt64,
    revenue Int64,
    sales Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (device_id, day)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_device_mv TO {db}.daily_device AS
SELECT toDate(document_time) AS day, device_id, count() AS receipts,
       countIf(offline = 1) AS offline_receipts, sum(revenue) AS revenue,
       sumIf(total, operation = 2) AS sales
FROM {db}.documents WHERE command = 1 GROUP BY day, device_id
;
-- VAT (and other tax) totals per day, tax and percent; turnover and tax signed by direction.
CREATE TABLE IF NOT EXISTS {db}.daily_tax
(
    day Date,
    device_id UInt32,
    tax_type UInt16,
    percent UInt32,
    turnover Int64,
    tax Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, device_id, tax_type, percent)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_tax_mv TO {db}.daily_tax AS
SELECT toDate(document_time) AS day, device_id, tax_type, percent,
       sum(turnover * multiIf(operation IN (1, 2), 1, -1)) AS turnover,
       sum(tax * multiIf(operation IN (1, 2), 1, -1)) AS tax
FROM {db}.receipt_taxes GROUP BY day, device_id, tax_type, percent
;
-- Daily revenue per trade point, as the registry placed each device when its receipt arrived
-- (the journal record carries it): a device moved to another point keeps its history where it
-- was made. Point 0: records from before the envelope carried it.
CREATE TABLE IF NOT EXISTS {db}.daily_trade_point
(
    day Date,
    organization_id UInt64,
    trade_point_id UInt64,
    receipts UInt64,
    offline_receipts UInt64,
    revenue Int64,
    sales Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (organization_id, trade_point_id, day)
SETTINGS non_replicated_deduplication_window = 1000
;
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_trade_point_mv TO {db}.daily_trade_point AS
SELECT toDate(document_time) AS day, organization_id, trade_point_id, count() AS receipts,
       countIf(offline = 1) AS offline_receipts, sum(revenue) AS revenue,
       sumIf(total, operation = 2) AS sales
FROM {db}.documents WHERE command = 1 GROUP BY day, organization_id, trade_point_id
;
CREATE VIEW IF NOT EXISTS {db}.offline_share AS
SELECT day, device_id, sum(d.receipts) AS receipts, sum(d.offline_receipts) AS offline_receipts,
       if(sum(d.receipts) = 0, 0, sum(d.offline_receipts) / sum(d.receipts)) AS share
FROM {db}.daily_device AS d GROUP BY day, device_id
;
-- Where each loader source (a local journal, a Kafka partition) has loaded up to; written only
-- after the batch before it was inserted. The latest row per source wins.
CREATE TABLE IF NOT EXISTS {db}.loader_positions
(
    source String,
    position UInt64,
    committed_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(committed_at)
ORDER BY source
;
-- The batch a loader is about to insert, written before the insert: after a crash the loader
-- replays exactly that batch with the same token and load time, so that a materialized view the
-- crash cut off gets its rows and every table that has them drops the repeat.
CREATE TABLE IF NOT EXISTS {db}.loader_intents
(
    source String,
    start UInt64,
    end UInt64,
    loaded_at_us Int64,
    committed_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(committed_at)
ORDER BY source
