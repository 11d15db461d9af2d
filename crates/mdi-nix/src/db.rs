//! Nix's database (`/nix/var/nix/db/db.sqlite`, schema version 10, the schema of Nix's
//! src/libstore/schema.sql) made from the closure's registration, deterministically:
//! rows in sorted path order, registrationTime = SOURCE_DATE_EPOCH, hashes as
//! `sha256:<base16>`, a pinned SQLite, rollback journal (no -wal file).

use crate::{NixError, Registration};

/// Nix's schema version for this layout (the `schema` file next to db.sqlite).
pub const SCHEMA_VERSION: &str = "10";

const SCHEMA: &str = "
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
";

/// Nix's base32 alphabet (no e, o, u, t).
const BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Decodes Nix's base32 (least significant digit last) into `len` bytes.
pub fn nix_base32_decode(s: &str, len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    let b = s.as_bytes();
    for n in 0..b.len() {
        let c = b[b.len() - n - 1];
        let digit = BASE32.iter().position(|&x| x == c)? as u16;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        if i >= len {
            if digit != 0 {
                return None;
            }
            continue;
        }
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < len {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// `sha256:<base32>`, `sha256:<base16>` or SRI `sha256-<base64>` → `sha256:<base16>`.
pub fn hash_to_base16(h: &str) -> Option<String> {
    let body = h.strip_prefix("sha256:").unwrap_or(h);
    if body.len() == 64 && body.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Some(format!("sha256:{}", body.to_ascii_lowercase()));
    }
    if body.len() == 52 {
        return nix_base32_decode(body, 32).map(|b| format!("sha256:{}", hex::encode(b)));
    }
    None
}

/// The database file for `regs` (any order; rows go in sorted path order), built in
/// memory (nothing is written outside the output folder) and returned as its bytes.
pub fn db_bytes(regs: &[Registration], registration_time: i64) -> Result<Vec<u8>, NixError> {
    let err = |e: rusqlite::Error| NixError::Db(e.to_string());
    let mut db = rusqlite::Connection::open_in_memory().map_err(err)?;
    db.execute_batch("pragma page_size = 4096; pragma foreign_keys = on;").map_err(err)?;
    db.execute_batch(SCHEMA).map_err(err)?;
    let mut sorted: Vec<&Registration> = regs.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let tx = db.transaction().map_err(err)?;
    {
        let mut ins = tx
            .prepare(
                "insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(err)?;
        for r in &sorted {
            let hash = hash_to_base16(&r.nar_hash)
                .ok_or_else(|| NixError::Db(format!("NAR hash '{}' of {} is not a sha256 hash", r.nar_hash, r.path)))?;
            ins.execute(rusqlite::params![r.path, hash, registration_time, r.deriver, r.nar_size as i64])
                .map_err(err)?;
        }
        let mut refs = tx
            .prepare("insert into Refs (referrer, reference) select a.id, b.id from ValidPaths a, ValidPaths b where a.path = ?1 and b.path = ?2")
            .map_err(err)?;
        for r in &sorted {
            let mut rs = r.references.clone();
            rs.sort();
            for reference in rs {
                let n = refs.execute(rusqlite::params![r.path, reference]).map_err(err)?;
                if n != 1 {
                    return Err(NixError::Db(format!("{} refers to {reference}, which is not in the closure", r.path)));
                }
            }
        }
    }
    tx.commit().map_err(err)?;
    let data = db.serialize(rusqlite::DatabaseName::Main).map_err(err)?;
    Ok(data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trip_known_value() {
        // sha256 of the empty string, as Nix prints it in base32 and base16.
        let b16 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let b32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        assert_eq!(hash_to_base16(&format!("sha256:{b32}")).unwrap(), format!("sha256:{b16}"));
        assert!(hash_to_base16("sha256:nonsense").is_none());
    }
}
