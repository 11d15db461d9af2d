//! DOS date and time fields (FAT spec §6.4): local time without a zone; we write UTC.

/// 1980-01-01 00:00:00 UTC, the earliest time FAT can store.
pub const FAT_EPOCH: i64 = 315_532_800;
/// 2107-12-31 23:59:58 UTC, the latest.
const FAT_END: i64 = 4_354_819_198;

/// (date, time) words for a Unix time, clamped to FAT's range.
pub fn dos(t: i64) -> (u16, u16) {
    let t = t.clamp(FAT_EPOCH, FAT_END);
    let (y, m, d) = mdi_tree::Timestamp::from_secs(t).civil_date();
    let secs = t.rem_euclid(86_400);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time = (((secs / 3600) as u16) << 11) | ((((secs / 60) % 60) as u16) << 5) | ((secs % 60) / 2) as u16;
    (date, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(dos(0), (0x21, 0)); // clamped: 1980-01-01
        assert_eq!(dos(FAT_EPOCH), ((1 << 5) | 1, 0));
        // 2023-11-14 22:13:20 UTC (1700000000)
        let (d, t) = dos(1_700_000_000);
        assert_eq!((d >> 9, (d >> 5) & 15, d & 31), (43, 11, 14));
        assert_eq!((t >> 11, (t >> 5) & 63, (t & 31) * 2), (22, 13, 20));
    }
}
