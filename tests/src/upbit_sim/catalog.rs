//! The simulated Upbit's market catalog: which pairs exist, their names, `market_event` flags, and the few
//! parameters (price level, turnover, trade rate, listing date) the deterministic data generator needs.

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use super::model::mix;

/// The five `market_event.caution` flags, in the order Upbit sends them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[allow(non_snake_case)] // the JSON keys are Upbit's upper-case names
pub struct Caution {
    pub PRICE_FLUCTUATIONS: bool,
    pub TRADING_VOLUME_SOARING: bool,
    pub DEPOSIT_AMOUNT_SOARING: bool,
    pub GLOBAL_PRICE_DIFFERENCES: bool,
    pub CONCENTRATION_OF_SMALL_ACCOUNTS: bool,
}

impl Caution {
    /// True when any caution flag is set.
    pub fn any(&self) -> bool {
        self.PRICE_FLUCTUATIONS
            || self.TRADING_VOLUME_SOARING
            || self.DEPOSIT_AMOUNT_SOARING
            || self.GLOBAL_PRICE_DIFFERENCES
            || self.CONCENTRATION_OF_SMALL_ACCOUNTS
    }
}

/// One listed pair and the knobs of its synthetic price series.
#[derive(Clone, Debug, PartialEq)]
pub struct MarketSpec {
    /// `{QUOTE}-{BASE}`, upper case.
    pub code: String,
    pub korean_name: String,
    pub english_name: String,
    /// `market_event.warning` (투자유의).
    pub warning: bool,
    pub caution: Caution,
    /// Centre of the price series, in the quote currency.
    pub base_price: f64,
    /// Typical traded value per UTC day, in the quote currency (drives volumes and `acc_trade_price_24h`).
    pub daily_turnover: f64,
    /// Trades per second (Poisson rate): decides which intervals have trades, hence which candles exist.
    pub trade_rate: f64,
    /// Listing date: no candle, trade or history exists before 00:00 UTC of this day.
    pub listed: NaiveDate,
}

impl MarketSpec {
    /// Builds a spec; names, flags and listing date can be changed on the returned value.
    pub fn new(code: &str, korean: &str, english: &str, base_price: f64, daily_turnover: f64, trade_rate: f64) -> Self {
        Self {
            code: code.to_string(),
            korean_name: korean.to_string(),
            english_name: english.to_string(),
            warning: false,
            caution: Caution::default(),
            base_price,
            daily_turnover,
            trade_rate,
            listed: date(2017, 9, 25),
        }
    }

    /// The quote currency (`KRW`, `BTC`, `USDT`).
    pub fn quote(&self) -> &str {
        self.code.split_once('-').map_or(self.code.as_str(), |(q, _)| q)
    }

    /// The base currency (`BTC` in `KRW-BTC`).
    pub fn base(&self) -> &str {
        self.code.split_once('-').map_or("", |(_, b)| b)
    }

    /// Seed of this market's series: every parameter takes part, so two catalogs with the same code but other
    /// parameters never share cached data.
    pub fn seed(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325_u64;
        for b in self.code.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let listed = u64::from(self.listed.num_days_from_ce().unsigned_abs());
        mix(&[
            h,
            self.base_price.to_bits(),
            self.daily_turnover.to_bits(),
            self.trade_rate.to_bits(),
            listed,
        ])
    }
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap_or(NaiveDate::MIN)
}

/// The set of listed pairs, in the order `/v1/market/all` returns them.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalog {
    pub markets: Vec<MarketSpec>,
}

/// (base, korean, english, base price KRW, daily turnover KRW, trades/s, listed y-m-d)
type Row = (&'static str, &'static str, &'static str, f64, f64, f64, (i32, u32, u32));

const KRW_ROWS: [Row; 42] = [
    ("BTC", "비트코인", "Bitcoin", 140_000_000.0, 300e9, 8.0, (2017, 9, 25)),
    ("ETH", "이더리움", "Ethereum", 5_000_000.0, 150e9, 6.0, (2017, 9, 25)),
    ("XRP", "리플", "XRP", 3_000.0, 200e9, 6.0, (2017, 9, 25)),
    ("SOL", "솔라나", "Solana", 250_000.0, 80e9, 4.0, (2021, 10, 15)),
    ("DOGE", "도지코인", "Dogecoin", 300.0, 60e9, 4.0, (2021, 2, 24)),
    ("ADA", "에이다", "Cardano", 1_000.0, 40e9, 3.0, (2017, 10, 1)),
    ("USDT", "테더", "Tether", 1_400.0, 20e9, 2.0, (2023, 10, 10)),
    ("SUI", "수이", "Sui", 4_500.0, 30e9, 3.0, (2023, 5, 3)),
    ("TRX", "트론", "TRON", 350.0, 20e9, 2.0, (2018, 4, 1)),
    ("AVAX", "아발란체", "Avalanche", 40_000.0, 15e9, 2.0, (2022, 1, 20)),
    ("LINK", "체인링크", "Chainlink", 25_000.0, 12e9, 2.0, (2020, 9, 1)),
    (
        "BCH",
        "비트코인캐시",
        "Bitcoin Cash",
        650_000.0,
        10e9,
        1.2,
        (2017, 11, 13),
    ),
    (
        "ETC",
        "이더리움클래식",
        "Ethereum Classic",
        35_000.0,
        9e9,
        1.0,
        (2017, 9, 25),
    ),
    ("PEPE", "페페", "Pepe", 0.02, 8e9, 1.5, (2023, 12, 1)),
    ("DOT", "폴카닷", "Polkadot", 8_000.0, 8e9, 1.5, (2020, 10, 1)),
    ("XLM", "스텔라루멘", "Lumen", 400.0, 7e9, 1.0, (2017, 10, 10)),
    ("SHIB", "시바이누", "Shiba Inu", 0.03, 6e9, 1.0, (2023, 12, 1)),
    ("HBAR", "헤데라", "Hedera", 300.0, 6e9, 1.0, (2020, 1, 1)),
    ("NEAR", "니어프로토콜", "NEAR Protocol", 5_000.0, 5e9, 0.8, (2022, 1, 1)),
    ("AAVE", "에이브", "Aave", 400_000.0, 5e9, 0.6, (2020, 10, 20)),
    ("APT", "앱토스", "Aptos", 9_000.0, 4e9, 0.8, (2022, 10, 19)),
    ("ATOM", "코스모스", "Cosmos", 6_000.0, 3e9, 0.6, (2019, 6, 1)),
    ("ARB", "아비트럼", "Arbitrum", 600.0, 3e9, 0.6, (2023, 3, 23)),
    ("SAND", "샌드박스", "The Sandbox", 400.0, 2e9, 0.5, (2020, 8, 1)),
    ("UNI", "유니스왑", "Uniswap", 10_000.0, 2e9, 0.4, (2023, 1, 5)),
    ("SEI", "세이", "Sei", 350.0, 2e9, 0.5, (2023, 8, 15)),
    ("MANA", "디센트럴랜드", "Decentraland", 400.0, 1.5e9, 0.4, (2017, 12, 1)),
    ("ALGO", "알고랜드", "Algorand", 300.0, 1.5e9, 0.3, (2020, 9, 1)),
    (
        "AXS",
        "엑시인피니티",
        "Axie Infinity",
        7_000.0,
        1.2e9,
        0.3,
        (2020, 12, 1),
    ),
    ("STX", "스택스", "Stacks", 1_500.0, 1.2e9, 0.3, (2021, 3, 1)),
    ("IMX", "이뮤터블엑스", "ImmutableX", 1_200.0, 0.9e9, 0.2, (2022, 2, 1)),
    (
        "ENS",
        "이더리움네임서비스",
        "Ethereum Name Service",
        30_000.0,
        0.9e9,
        0.15,
        (2022, 6, 1),
    ),
    ("EOS", "이오스", "EOS", 1_000.0, 0.8e9, 0.2, (2017, 11, 1)),
    ("CHZ", "칠리즈", "Chiliz", 100.0, 0.7e9, 0.2, (2021, 3, 1)),
    ("NEO", "네오", "NEO", 15_000.0, 0.6e9, 0.15, (2017, 9, 25)),
    ("GRT", "더그래프", "The Graph", 200.0, 0.6e9, 0.12, (2021, 6, 1)),
    ("QTUM", "퀀텀", "Qtum", 4_000.0, 0.5e9, 0.1, (2017, 9, 25)),
    ("FLOW", "플로우", "Flow", 800.0, 0.3e9, 0.05, (2021, 2, 1)),
    ("ZIL", "질리카", "Zilliqa", 20.0, 0.2e9, 0.03, (2018, 1, 1)),
    ("MLK", "밀크", "MiL.k", 300.0, 0.05e9, 0.008, (2020, 5, 1)),
    ("STRAX", "스트라티스", "Stratis", 80.0, 0.02e9, 0.006, (2017, 9, 25)),
    ("MOC", "모스코인", "Moss Coin", 90.0, 0.01e9, 0.004, (2019, 1, 1)),
];

/// (code, korean, english, base price in quote, daily turnover in quote, trades/s, listed)
const OTHER_ROWS: [Row; 10] = [
    ("BTC-ETH", "이더리움", "Ethereum", 0.035, 30.0, 0.5, (2017, 9, 25)),
    ("BTC-XRP", "리플", "XRP", 0.000_021, 15.0, 0.4, (2017, 9, 25)),
    ("BTC-SOL", "솔라나", "Solana", 0.0018, 8.0, 0.3, (2021, 10, 15)),
    ("BTC-DOGE", "도지코인", "Dogecoin", 0.000_002_2, 5.0, 0.2, (2019, 7, 1)),
    ("BTC-LINK", "체인링크", "Chainlink", 0.000_18, 2.0, 0.1, (2020, 9, 1)),
    ("BTC-ADA", "에이다", "Cardano", 0.000_007_5, 1.0, 0.05, (2017, 10, 1)),
    ("USDT-BTC", "비트코인", "Bitcoin", 97_000.0, 2.0e6, 0.5, (2019, 4, 1)),
    ("USDT-ETH", "이더리움", "Ethereum", 3_500.0, 1.0e6, 0.3, (2019, 4, 1)),
    ("USDT-XRP", "리플", "XRP", 2.1, 0.5e6, 0.2, (2019, 4, 1)),
    ("USDT-SOL", "솔라나", "Solana", 170.0, 0.2e6, 0.1, (2021, 10, 15)),
];

fn spec(code: &str, r: &Row) -> MarketSpec {
    let mut m = MarketSpec::new(code, r.1, r.2, r.3, r.4, r.5);
    m.listed = date(r.6 .0, r.6 .1, r.6 .2);
    m
}

impl Default for Catalog {
    /// 42 KRW markets (two under a warning, two with caution flags, three thin ones whose minute candles have
    /// gaps), 6 BTC markets and 4 USDT markets.
    fn default() -> Self {
        let mut markets: Vec<MarketSpec> = KRW_ROWS.iter().map(|r| spec(&format!("KRW-{}", r.0), r)).collect();
        markets.extend(OTHER_ROWS.iter().map(|r| spec(r.0, r)));
        for m in &mut markets {
            match m.code.as_str() {
                // A liquid market under a warning: a scanner must drop it for the warning, not for its volume.
                "KRW-PEPE" => {
                    m.warning = true;
                    m.caution.CONCENTRATION_OF_SMALL_ACCOUNTS = true;
                }
                "KRW-STRAX" => m.warning = true,
                "KRW-SHIB" => m.caution.PRICE_FLUCTUATIONS = true,
                "KRW-MOC" => {
                    m.caution.PRICE_FLUCTUATIONS = true;
                    m.caution.TRADING_VOLUME_SOARING = true;
                }
                _ => {}
            }
        }
        Self { markets }
    }
}

impl Catalog {
    /// The default catalog with synthetic KRW markets (`KRW-SIM001`, ...) added until there are `n` KRW markets
    /// (the throughput figure uses 230). Synthetic markets get deterministic prices, turnovers, trade rates,
    /// listing dates and flags (every 17th under a warning, every 11th with a caution).
    pub fn with_krw_markets(n: usize) -> Self {
        let mut c = Self::default();
        let mut krw = c.markets.iter().filter(|m| m.quote() == "KRW").count();
        let insert_at = krw;
        let mut extra = Vec::new();
        let mut i = 0u64;
        while krw < n {
            i += 1;
            let h = mix(&[0x5151_u64, i]);
            let u = |k: u64| (mix(&[h, k]) >> 11) as f64 / (1u64 << 53) as f64;
            let price = 10f64.powf(-1.0 + 7.0 * u(1));
            let turnover = 10f64.powf(8.0 + 2.8 * u(2));
            let rate = 10f64.powf(-2.3 + 2.8 * u(3));
            let mut m = MarketSpec::new(
                &format!("KRW-SIM{i:03}"),
                &format!("시뮬레이션{i}"),
                &format!("Simulated {i}"),
                price,
                turnover,
                rate,
            );
            m.listed = date(2018, 1, 1) + chrono::Duration::days((u(4) * 2400.0) as i64);
            m.warning = i % 17 == 0;
            m.caution.TRADING_VOLUME_SOARING = i % 11 == 0;
            extra.push(m);
            krw += 1;
        }
        c.markets.splice(insert_at..insert_at, extra);
        c
    }

    /// Looks a code up case-insensitively (Upbit's REST accepted `krw-btc`, reference §2.1).
    pub fn find(&self, code: &str) -> Option<&MarketSpec> {
        self.markets.iter().find(|m| m.code.eq_ignore_ascii_case(code))
    }

    /// Codes of every market, in catalog order.
    pub fn codes(&self) -> Vec<String> {
        self.markets.iter().map(|m| m.code.clone()).collect()
    }
}
