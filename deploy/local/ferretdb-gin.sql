SET client_min_messages = warning;
-- Indexes FerretDB's queries can use, added beside the ones it creates (run once per database).
--
-- FerretDB v1.24 (PostgreSQL backend) pushes an equality on a top-level field down as
-- `_jsonb -> '<field>' @> '<value>'`. The btree indexes that `create_index` makes are on
-- `(_jsonb -> '<field>')` and cannot serve `@>`, so every such query was a sequential scan. For each
-- column of every btree index FerretDB creates (the `_id` index included), this trigger adds a GIN
-- index with `jsonb_path_ops` on the same expression, which serves `@>`; several equalities of one
-- filter combine as a BitmapAnd. The services stay plain MongoDB clients: they call `create_index`
-- and the engine does the rest. A dropped collection takes its indexes with it.
CREATE OR REPLACE FUNCTION public.banksync_gin_indexes() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  cmd record;
  ix record;
  k int;
  expr text;
BEGIN
  FOR cmd IN SELECT objid FROM pg_event_trigger_ddl_commands() WHERE object_type = 'index' LOOP
    SELECT i.indexrelid, i.indnatts, am.amname, t.relname AS tbl, n.nspname
      INTO ix
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_am am ON am.oid = c.relam
      JOIN pg_class t ON t.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
     WHERE i.indexrelid = cmd.objid;
    CONTINUE WHEN NOT FOUND OR ix.amname <> 'btree' OR ix.nspname IN ('pg_catalog', 'information_schema', 'public');
    FOR k IN 1..ix.indnatts LOOP
      expr := pg_get_indexdef(ix.indexrelid, k, false);
      CONTINUE WHEN position('_jsonb' IN expr) = 0;
      EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON %I.%I USING gin ((%s) jsonb_path_ops)',
        'gin_' || md5(ix.nspname || '.' || ix.tbl || ':' || expr), ix.nspname, ix.tbl, expr
      );
    END LOOP;
  END LOOP;
END
$fn$;

DROP EVENT TRIGGER IF EXISTS banksync_gin_indexes;
CREATE EVENT TRIGGER banksync_gin_indexes ON ddl_command_end
  WHEN TAG IN ('CREATE INDEX')
  EXECUTE FUNCTION public.banksync_gin_indexes();

-- FerretDB prepares its statements; a generic plan, made before an index existed or with the field
-- name as a parameter, never uses these indexes. A custom plan per execution does.
ALTER DATABASE ferretdb SET plan_cache_mode = force_custom_plan;
