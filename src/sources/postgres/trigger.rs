//! `unpoll sql-trigger`: the SQL that makes a legacy table announce its changes, so an app
//! gets events without a line of new code.
//!
//! Two shapes:
//! - plain: an `AFTER INSERT OR UPDATE OR DELETE` row trigger that calls
//!   `pg_notify(channel, '{"op": "INSERT", "table": "messages", <key columns>}')`.
//! - outbox (`--outbox TABLE`): the same trigger inserts the payload into an outbox table
//!   instead; a `BEFORE INSERT` trigger on the outbox serialises inserts with a
//!   transaction-scoped advisory lock and assigns the id under it, so ids are in commit
//!   order (see [`super::outbox`] for why that matters), then sends an empty NOTIFY as a
//!   wake-up. Also creates the table of delivery cursors unpoll keeps per outbox.
//!
//! The default payload is the primary-key columns (looked up at run time in `pg_index`, so
//! the trigger keeps working after a schema change), or `id` when the table has no primary
//! key: well under NOTIFY's 8000-byte limit. A payload that would still exceed it is
//! replaced by `{"op", "table", "truncated": true}` rather than failing the app's
//! transaction.

use std::fmt::Write as _;

/// The first key of the two-key advisory lock that serialises outbox inserts (ASCII
/// "unpo"); the second key is the outbox table's OID, so each outbox has its own lock.
pub const OUTBOX_LOCK_NAMESPACE: i32 = 0x756e_706f;

/// The table that holds unpoll's delivery position per outbox and consumer.
pub const CURSOR_TABLE: &str = "unpoll_outbox_cursors";

/// Largest NOTIFY payload Postgres accepts is 7999 bytes (8000 with the terminator).
const MAX_PAYLOAD_BYTES: usize = 7999;

/// What `unpoll sql-trigger` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSpec {
    /// The table whose changes are announced, optionally `schema.table`.
    pub table: String,
    /// The Postgres NOTIFY channel (the `listen` of a `[[notify]]` rule).
    pub notify: String,
    /// Columns in the payload; empty = the primary key (or `id`).
    pub columns: Vec<String>,
    /// Write changes to this outbox table (optionally `schema.table`) instead of putting
    /// them in the NOTIFY payload.
    pub outbox: Option<String>,
}

/// Why the SQL cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// A name is empty or has an empty part (`a.`), or more than two parts.
    #[error("{what}: invalid name {name:?} (write NAME or SCHEMA.NAME)")]
    InvalidName {
        /// Which argument.
        what: &'static str,
        /// The value given.
        name: String,
    },
    /// A NUL byte cannot appear in a Postgres identifier or literal.
    #[error("{what}: names cannot contain a NUL byte")]
    Nul {
        /// Which argument.
        what: &'static str,
    },
}

/// A possibly schema-qualified name, each part quoted as an identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Name {
    schema: Option<String>,
    name: String,
}

impl Name {
    fn parse(what: &'static str, text: &str) -> Result<Name, TriggerError> {
        if text.contains('\0') {
            return Err(TriggerError::Nul { what });
        }
        let invalid = || TriggerError::InvalidName {
            what,
            name: text.to_string(),
        };
        let mut parts = text.split('.');
        let (first, second) = (parts.next().ok_or_else(invalid)?, parts.next());
        if parts.next().is_some() || first.is_empty() || second == Some("") {
            return Err(invalid());
        }
        Ok(match second {
            Some(name) => Name {
                schema: Some(first.to_string()),
                name: name.to_string(),
            },
            None => Name {
                schema: None,
                name: first.to_string(),
            },
        })
    }

    /// The quoted, qualified name for SQL: `"public"."messages"`.
    fn sql(&self) -> String {
        self.with_name(&self.name)
    }

    /// Another object in the same schema: `"public"."unpoll_notify_messages"`.
    fn with_name(&self, name: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", ident(schema), ident(name)),
            None => ident(name),
        }
    }
}

/// Quote an SQL identifier: `a"b` → `"a""b"`.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal: `it's` → `'it''s'` (standard_conforming_strings is on by
/// default since Postgres 9.1, so backslashes are literal).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Generate the SQL for `spec`.
pub fn generate(spec: &TriggerSpec) -> Result<String, TriggerError> {
    let table = Name::parse("--table", &spec.table)?;
    if spec.notify.is_empty() {
        return Err(TriggerError::InvalidName {
            what: "--notify",
            name: String::new(),
        });
    }
    if spec.notify.contains('\0') || spec.columns.iter().any(|c| c.contains('\0')) {
        return Err(TriggerError::Nul {
            what: "--notify/--columns",
        });
    }
    if let Some(c) = spec.columns.iter().find(|c| c.is_empty()) {
        return Err(TriggerError::InvalidName {
            what: "--columns",
            name: c.clone(),
        });
    }
    let outbox = spec
        .outbox
        .as_deref()
        .map(|o| Name::parse("--outbox", o))
        .transpose()?;

    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "-- Generated by `unpoll sql-trigger`: announces INSERT, UPDATE and DELETE on {}.",
        table.sql()
    );
    let _ = writeln!(sql, "BEGIN;\n");
    if let Some(outbox) = &outbox {
        outbox_sql(&mut sql, outbox, spec);
    }
    change_trigger_sql(&mut sql, &table, spec, outbox.as_ref());
    let _ = writeln!(sql, "COMMIT;");
    Ok(sql)
}

/// The row trigger on the app's table.
fn change_trigger_sql(sql: &mut String, table: &Name, spec: &TriggerSpec, outbox: Option<&Name>) {
    let function = table.with_name(&format!("unpoll_notify_{}", table.name));
    let columns = if spec.columns.is_empty() {
        "NULL".to_string()
    } else {
        let quoted: Vec<String> = spec.columns.iter().map(|c| literal(c)).collect();
        format!("ARRAY[{}]::text[]", quoted.join(", "))
    };
    let deliver = match outbox {
        None => format!(
            "  IF octet_length(payload::text) > {MAX_PAYLOAD_BYTES} THEN\n    \
             -- NOTIFY refuses larger payloads and would fail the app's transaction.\n    \
             payload := jsonb_build_object('op', TG_OP, 'table', TG_TABLE_NAME, 'truncated', true);\n  \
             END IF;\n  \
             PERFORM pg_notify({}, payload::text);",
            literal(&spec.notify)
        ),
        Some(outbox) => format!(
            "  INSERT INTO {} (channel, event, data) VALUES (TG_TABLE_NAME, lower(TG_OP), payload);",
            outbox.sql()
        ),
    };
    let _ = write!(
        sql,
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql AS $unpoll$
DECLARE
  -- The payload's columns; NULL = the primary key, looked up below.
  cols text[] := {columns};
  rec jsonb;
  payload jsonb;
BEGIN
  IF TG_OP = 'DELETE' THEN rec := to_jsonb(OLD); ELSE rec := to_jsonb(NEW); END IF;
  IF cols IS NULL THEN
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO cols
      FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = TG_RELID AND i.indisprimary;
    cols := coalesce(cols, ARRAY['id']);
  END IF;
  SELECT coalesce(jsonb_object_agg(key, value), '{{}}'::jsonb) INTO payload
    FROM jsonb_each(rec) WHERE key = ANY (cols);
  -- op and table last: they win over columns of the same name.
  payload := payload || jsonb_build_object('op', TG_OP, 'table', TG_TABLE_NAME);
{deliver}
  RETURN NULL;
END;
$unpoll$;

DROP TRIGGER IF EXISTS unpoll_notify ON {table};
CREATE TRIGGER unpoll_notify AFTER INSERT OR UPDATE OR DELETE ON {table}
  FOR EACH ROW EXECUTE FUNCTION {function}();

",
        table = table.sql(),
    );
}

/// The outbox table, its ordering trigger and the cursor table.
fn outbox_sql(sql: &mut String, outbox: &Name, spec: &TriggerSpec) {
    let table = outbox.sql();
    let sequence = outbox.with_name(&format!("{}_id_seq", outbox.name));
    let function = outbox.with_name(&format!("unpoll_outbox_{}", outbox.name));
    let cursors = outbox.with_name(CURSOR_TABLE);
    let _ = write!(
        sql,
        "-- The outbox: unpoll delivers its rows in id order, at least once.
CREATE SEQUENCE IF NOT EXISTS {sequence};
CREATE TABLE IF NOT EXISTS {table} (
  id         bigint PRIMARY KEY,  -- assigned by the trigger below, under the lock
  channel    text NOT NULL,
  event      text,
  data       jsonb NOT NULL DEFAULT '{{}}',
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER SEQUENCE {sequence} OWNED BY {table}.id;
-- Retention deletes by age; without this it would scan the whole table every time.
CREATE INDEX IF NOT EXISTS {index} ON {table} (created_at);

-- Sequence values are taken at insert but become visible at commit, so without this a row
-- with a smaller id could commit after unpoll has read a larger one, and be skipped. The
-- transaction-scoped advisory lock serialises outbox writers from their first outbox
-- insert to their commit, and the id is taken under it: ids are in commit order.
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger
LANGUAGE plpgsql AS $unpoll$
BEGIN
  PERFORM pg_advisory_xact_lock({OUTBOX_LOCK_NAMESPACE}, TG_RELID::int4);
  NEW.id := nextval({sequence_literal});
  NEW.created_at := clock_timestamp();
  -- A wake-up only (delivered at commit; identical ones in a transaction fold into one).
  PERFORM pg_notify({notify}, '');
  RETURN NEW;
END;
$unpoll$;

DROP TRIGGER IF EXISTS unpoll_outbox_order ON {table};
CREATE TRIGGER unpoll_outbox_order BEFORE INSERT ON {table}
  FOR EACH ROW EXECUTE FUNCTION {function}();

-- unpoll's delivery position per outbox and consumer (survives unpoll restarts).
CREATE TABLE IF NOT EXISTS {cursors} (
  outbox     text NOT NULL,
  consumer   text NOT NULL,
  last_id    bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (outbox, consumer)
);

",
        sequence_literal = literal(&sequence),
        index = ident(&format!("{}_created_at_idx", outbox.name)),
        notify = literal(&spec.notify),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(table: &str) -> TriggerSpec {
        TriggerSpec {
            table: table.to_string(),
            notify: "messages_changes".to_string(),
            columns: Vec::new(),
            outbox: None,
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(
            Name::parse("t", "app.Messages").unwrap().sql(),
            "\"app\".\"Messages\""
        );
        assert_eq!(Name::parse("t", "m").unwrap().sql(), "\"m\"");
        for bad in ["", ".", "a.", ".b", "a.b.c"] {
            assert!(Name::parse("t", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Name::parse("t", "a\0b").unwrap_err(),
            TriggerError::Nul { what: "t" }
        );
    }

    #[test]
    fn plain_trigger_notifies_with_key_columns() {
        let sql = generate(&spec("messages")).unwrap();
        assert!(sql.contains("cols text[] := NULL;"));
        assert!(sql.contains("i.indisprimary"));
        assert!(sql.contains("PERFORM pg_notify('messages_changes', payload::text);"));
        assert!(sql.contains("AFTER INSERT OR UPDATE OR DELETE ON \"messages\""));
        assert!(sql.contains("EXECUTE FUNCTION \"unpoll_notify_messages\"()"));
        assert!(!sql.contains("advisory"));
        assert!(sql.starts_with("--") && sql.trim_end().ends_with("COMMIT;"));
    }

    #[test]
    fn chosen_columns_and_hostile_names_are_quoted() {
        let mut s = spec("app.Me\"ssages");
        s.notify = "it's".to_string();
        s.columns = vec!["id".to_string(), "chat'id".to_string()];
        let sql = generate(&s).unwrap();
        assert!(sql.contains("cols text[] := ARRAY['id', 'chat''id']::text[];"));
        assert!(sql.contains("pg_notify('it''s', payload::text)"));
        assert!(sql.contains("ON \"app\".\"Me\"\"ssages\""));
        assert!(sql.contains("\"app\".\"unpoll_notify_Me\"\"ssages\"()"));
    }

    #[test]
    fn outbox_mode_inserts_rows_under_the_lock() {
        let mut s = spec("messages");
        s.outbox = Some("ops.outbox".to_string());
        let sql = generate(&s).unwrap();
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"ops\".\"outbox\""));
        assert!(sql.contains(&format!(
            "pg_advisory_xact_lock({OUTBOX_LOCK_NAMESPACE}, TG_RELID::int4)"
        )));
        assert!(sql.contains("NEW.id := nextval('\"ops\".\"outbox_id_seq\"');"));
        assert!(sql.contains("PERFORM pg_notify('messages_changes', '');"));
        assert!(sql.contains(
            "INSERT INTO \"ops\".\"outbox\" (channel, event, data) VALUES (TG_TABLE_NAME, lower(TG_OP), payload);"
        ));
        assert!(sql.contains("\"ops\".\"unpoll_outbox_cursors\""));
        assert!(sql.contains(
            "INDEX IF NOT EXISTS \"outbox_created_at_idx\" ON \"ops\".\"outbox\" (created_at)"
        ));
        // the app's trigger no longer notifies with the payload itself
        assert!(!sql.contains("pg_notify('messages_changes', payload::text)"));
    }

    #[test]
    fn rejects_empty_arguments() {
        let mut s = spec("messages");
        s.notify.clear();
        assert!(generate(&s).is_err());
        let mut s = spec("messages");
        s.columns = vec![String::new()];
        assert!(generate(&s).is_err());
        assert!(generate(&spec("")).is_err());
    }
}
