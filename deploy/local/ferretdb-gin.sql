SET client_min_messages = warning;
-- Indexes FerretDB's queries can use, added beside the ones it creates. Run by `ferretdb.sh start` at
-- every start, as the cluster's superuser: idempotent, and fast on a database that needs nothing.
--
-- FerretDB v1.24 (PostgreSQL backend) pushes an equality on a top-level field down as
-- `_jsonb -> '<field>' @> '<value>'`. The btree indexes that `create_index` makes are on
-- `(_jsonb -> '<field>')` and cannot serve `@>`, so every such query was a sequential scan. For each
-- column of every btree index FerretDB has (the `_id` index included), a GIN index with
-- `jsonb_path_ops` on the same expression (its "twin", named `gin_<md5 of schema.table:expression>`)
-- serves `@>`; several equalities of one filter combine as a BitmapAnd. Twins are built without a
-- pending list (`fastupdate = off`): with one, every lookup also reads the entries inserted since the
-- last vacuum, and a lookup by `_id` after a bulk insert cost 3x as much. The services stay plain
-- MongoDB clients: they call `create_index` and the engine does the rest:
--
-- - an index FerretDB creates gets its twins at once (event trigger on CREATE INDEX);
-- - an index FerretDB drops (`drop_index`) takes its twins along, unless another btree index of the
--   table still has that expression (event trigger on sql_drop): the local engine never looks
--   indexed where MongoDB would not be;
-- - indexes made before this script ran (an existing database) get theirs at the end of this file;
-- - a dropped collection takes all its indexes with it.

-- The twins one btree index lacks, created. Every schema but PostgreSQL's own and `public` is a
-- FerretDB database.
CREATE OR REPLACE FUNCTION public.banksync_gin_twins(btree oid) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
  ix record;
  k int;
  expr text;
BEGIN
  SELECT i.indexrelid, i.indnatts, am.amname, t.relname AS tbl, n.nspname
    INTO ix
    FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_am am ON am.oid = c.relam
    JOIN pg_class t ON t.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
   WHERE i.indexrelid = btree;
  IF NOT FOUND OR ix.amname <> 'btree'
     OR ix.nspname IN ('pg_catalog', 'information_schema', 'public') OR ix.nspname LIKE 'pg\_%' THEN
    RETURN;
  END IF;
  FOR k IN 1..ix.indnatts LOOP
    expr := pg_get_indexdef(ix.indexrelid, k, false);
    CONTINUE WHEN position('_jsonb' IN expr) = 0;
    EXECUTE format(
      'CREATE INDEX IF NOT EXISTS %I ON %I.%I USING gin ((%s) jsonb_path_ops) WITH (fastupdate = off)',
      'gin_' || md5(ix.nspname || '.' || ix.tbl || ':' || expr), ix.nspname, ix.tbl, expr
    );
  END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION public.banksync_gin_indexes() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  cmd record;
BEGIN
  FOR cmd IN SELECT objid FROM pg_event_trigger_ddl_commands() WHERE object_type = 'index' LOOP
    PERFORM public.banksync_gin_twins(cmd.objid);
  END LOOP;
END
$fn$;

-- At sql_drop the dropped index is gone from the catalogs (its expressions with it), so the twins of
-- each schema an index was dropped from are checked against the btree indexes left: a twin stays
-- while some btree index of its table has its expression as a column. Dropping twins (here, or by
-- hand) and dropping tables need nothing.
CREATE OR REPLACE FUNCTION public.banksync_gin_orphans() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  orphan record;
BEGIN
  FOR orphan IN
    SELECT n.nspname, g.relname
      FROM pg_class g
      JOIN pg_index gi ON gi.indexrelid = g.oid
      JOIN pg_namespace n ON n.oid = g.relnamespace
     WHERE g.relkind = 'i'
       AND g.relname ~ '^gin_[0-9a-f]{32}$'
       AND n.nspname IN (
             SELECT d.schema_name FROM pg_event_trigger_dropped_objects() d
              WHERE d.object_type = 'index' AND d.original
                AND d.object_name !~ '^gin_[0-9a-f]{32}$'
           )
       AND NOT EXISTS (
             SELECT 1
               FROM pg_index b
               JOIN pg_class bc ON bc.oid = b.indexrelid
               JOIN pg_am bam ON bam.oid = bc.relam
              CROSS JOIN LATERAL generate_series(1, b.indnatts) AS k
              WHERE b.indrelid = gi.indrelid AND bam.amname = 'btree'
                AND pg_get_indexdef(b.indexrelid, k, false) = pg_get_indexdef(gi.indexrelid, 1, false)
           )
  LOOP
    EXECUTE format('DROP INDEX IF EXISTS %I.%I', orphan.nspname, orphan.relname);
  END LOOP;
END
$fn$;

DROP EVENT TRIGGER IF EXISTS banksync_gin_indexes;
CREATE EVENT TRIGGER banksync_gin_indexes ON ddl_command_end
  WHEN TAG IN ('CREATE INDEX')
  EXECUTE FUNCTION public.banksync_gin_indexes();

DROP EVENT TRIGGER IF EXISTS banksync_gin_orphans;
CREATE EVENT TRIGGER banksync_gin_orphans ON sql_drop
  WHEN TAG IN ('DROP INDEX')
  EXECUTE FUNCTION public.banksync_gin_orphans();

-- FerretDB prepares its statements; a generic plan, made before an index existed or with the field
-- name as a parameter, never uses these indexes. A custom plan per execution does.
ALTER DATABASE ferretdb SET plan_cache_mode = force_custom_plan;

-- Backfill: every btree index on `_jsonb` expressions that has a column without its twin (an index
-- made before the trigger existed) gets it now. One catalog query; nothing else when nothing lacks.
DO $backfill$
DECLARE
  btree oid;
BEGIN
  FOR btree IN
    SELECT DISTINCT i.indexrelid
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_am am ON am.oid = c.relam
      JOIN pg_namespace n ON n.oid = c.relnamespace
     CROSS JOIN LATERAL generate_series(1, i.indnatts) AS k
     WHERE am.amname = 'btree'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'public') AND n.nspname NOT LIKE 'pg\_%'
       AND position('_jsonb' IN pg_get_indexdef(i.indexrelid, k, false)) > 0
       AND NOT EXISTS (
             SELECT 1
               FROM pg_index g
               JOIN pg_class gc ON gc.oid = g.indexrelid
               JOIN pg_opclass oc ON oc.oid = g.indclass[0]
              WHERE g.indrelid = i.indrelid AND g.indnatts = 1 AND oc.opcname = 'jsonb_path_ops'
                AND pg_get_indexdef(g.indexrelid, 1, false) = pg_get_indexdef(i.indexrelid, k, false)
           )
  LOOP
    PERFORM public.banksync_gin_twins(btree);
  END LOOP;
END
$backfill$;
