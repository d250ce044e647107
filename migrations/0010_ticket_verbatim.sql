-- The contract carries a job's ticket "unchanged" on every event about the job. `jsonb`
-- normalises what it stores (keys reordered by length, spacing dropped, duplicate keys merged),
-- so the ticket and the outbox's event bodies are kept as `json`: PostgreSQL stores `json` as
-- the exact text given, and the relay publishes an event body as that text. A ticket's extra
-- fields, their order and spacing therefore reach every event byte for byte. Nothing queries
-- into these columns beyond `->>` (which `json` has too), and neither is indexed.
ALTER TABLE jobs ALTER COLUMN ticket TYPE json USING ticket::json;
ALTER TABLE outbox ALTER COLUMN body TYPE json USING body::json;
