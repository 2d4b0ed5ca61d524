//! Behaviour of every load-balancing policy: shares, spreading, stickiness,
//! load awareness, eligibility and edge cases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fyerrpc::balance::{
    by_name, hash_key, Balancer, Candidate, LeastRequest, Maglev, PeakEwma, PickContext, Picker,
    Random, RingHash, RoundRobin, WeightedRandom, WeightedRoundRobin, POLICY_ALIASES, POLICY_NAMES,
};
use fyerrpc::Instance;

const METHOD: &str = "/test.Echo/Echo";

fn endpoint(id: &str, weight: u32) -> Candidate {
    let n: u32 = id.bytes().map(u32::from).sum();
    let addr = format!("10.{}.{}.1:50051", n / 256 % 256, n % 256);
    let instance = Instance::new(id, "Echo", addr)
        .unwrap()
        .with_weight(weight)
        .unwrap();
    Candidate::new(Arc::new(instance))
}

fn weighted(weights: &[u32]) -> Vec<Candidate> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| endpoint(&format!("inst-{i}"), w))
        .collect()
}

fn uniform(n: usize) -> Vec<Candidate> {
    weighted(&vec![100; n])
}

fn all_policies() -> Vec<Arc<dyn Balancer>> {
    POLICY_NAMES.iter().map(|n| by_name(n).unwrap()).collect()
}

/// Picks `picks` times and returns the fraction each endpoint got.
fn shares(picker: &dyn Picker, ctx: &PickContext<'_>, n: usize, picks: usize) -> Vec<f64> {
    let mut counts = vec![0usize; n];
    for _ in 0..picks {
        counts[picker.pick(ctx).expect("an eligible endpoint")] += 1;
    }
    counts.iter().map(|&c| c as f64 / picks as f64).collect()
}

/// Asserts every share is within `tolerance` (absolute) of the weight share,
/// counting only endpoints for which `eligible` holds.
fn assert_weight_shares(
    got: &[f64],
    weights: &[u32],
    eligible: impl Fn(usize) -> bool,
    tolerance: f64,
) {
    let total: f64 = (0..weights.len())
        .filter(|&i| eligible(i))
        .map(|i| f64::from(weights[i]))
        .sum();
    for (i, &share) in got.iter().enumerate() {
        let want = if eligible(i) {
            f64::from(weights[i]) / total
        } else {
            0.0
        };
        assert!(
            (share - want).abs() <= tolerance,
            "endpoint {i}: share {share:.4}, expected {want:.4} ± {tolerance}"
        );
    }
}

fn ctx_for_key(key: u64) -> PickContext<'static> {
    PickContext::new(METHOD).with_hash(hash_key(&key.to_le_bytes()))
}

// ---------------------------------------------------------------- all policies

#[test]
fn every_policy_returns_none_for_an_empty_set() {
    for policy in all_policies() {
        let picker = policy.build(&[]);
        assert_eq!(
            picker.pick(&PickContext::new(METHOD)),
            None,
            "{}",
            policy.name()
        );
        assert_eq!(picker.pick(&ctx_for_key(1)), None, "{}", policy.name());
    }
}

#[test]
fn every_policy_picks_the_only_endpoint() {
    for policy in all_policies() {
        let picker = policy.build(&uniform(1));
        for key in 0..100 {
            assert_eq!(
                picker.pick(&PickContext::new(METHOD)),
                Some(0),
                "{}",
                policy.name()
            );
            assert_eq!(picker.pick(&ctx_for_key(key)), Some(0), "{}", policy.name());
        }
    }
}

#[test]
fn every_policy_returns_none_when_nothing_is_eligible() {
    let none = |_: usize| false;
    for policy in all_policies() {
        for n in [1, 5, 300] {
            let picker = policy.build(&uniform(n));
            let ctx = PickContext::new(METHOD).with_eligible(&none);
            assert_eq!(picker.pick(&ctx), None, "{} with {n}", policy.name());
            assert_eq!(
                picker.pick(&ctx.with_hash(42)),
                None,
                "{} with {n}",
                policy.name()
            );
        }
    }
}

#[test]
fn every_policy_never_picks_an_ineligible_endpoint() {
    let weights: Vec<u32> = (0..50).map(|i| 1 + (i * 37) % 200).collect();
    let endpoints = weighted(&weights);
    // Two thirds ineligible, in runs and scattered.
    let eligible = |i: usize| i % 3 == 2 || i == 0;
    for policy in all_policies() {
        let picker = policy.build(&endpoints);
        for key in 0..5_000u64 {
            let ctx = PickContext::new(METHOD).with_eligible(&eligible);
            let ctx = if key % 2 == 0 {
                ctx.with_hash(hash_key(&key.to_le_bytes()))
            } else {
                ctx
            };
            let i = picker.pick(&ctx).expect("some endpoint is eligible");
            assert!(eligible(i), "{} picked ineligible {i}", policy.name());
        }
        let only_last = |i: usize| i == 49;
        let ctx = PickContext::new(METHOD).with_eligible(&only_last);
        assert_eq!(picker.pick(&ctx), Some(49), "{}", policy.name());
        assert_eq!(
            picker.pick(&ctx.with_hash(3)),
            Some(49),
            "{}",
            policy.name()
        );
    }
}

#[test]
fn every_policy_spreads_over_all_endpoints() {
    for policy in all_policies() {
        let picker = policy.build(&uniform(5));
        let mut seen = [false; 5];
        for key in 0..2_000u64 {
            let ctx = if key % 2 == 0 {
                ctx_for_key(key)
            } else {
                PickContext::new(METHOD)
            };
            seen[picker.pick(&ctx).unwrap()] = true;
        }
        assert_eq!(seen, [true; 5], "{}", policy.name());
    }
}

// ---------------------------------------------------------------- round robin

#[test]
fn round_robin_cycles_evenly() {
    let picker = RoundRobin.build(&uniform(4));
    let ctx = PickContext::new(METHOD);
    let first = picker.pick(&ctx).unwrap();
    for k in 1..400 {
        assert_eq!(picker.pick(&ctx), Some((first + k) % 4));
    }
}

#[test]
fn round_robin_keeps_equal_shares_around_an_ineligible_endpoint() {
    let picker = RoundRobin.build(&uniform(4));
    let not_1 = |i: usize| i != 1;
    let ctx = PickContext::new(METHOD).with_eligible(&not_1);
    let got = shares(picker.as_ref(), &ctx, 4, 3_000);
    assert_eq!(got, vec![1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0]);
}

// ------------------------------------------------------- weighted round robin

#[test]
fn weighted_round_robin_shares_match_weights() {
    // Exact over whole periods; ±0.1% over 100k picks whatever the start.
    let weights = [100, 200, 300, 400];
    let picker = WeightedRoundRobin.build(&weighted(&weights));
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 4, 100_000);
    assert_weight_shares(&got, &weights, |_| true, 0.001);
    // Coprime weights: a 67-entry period.
    let weights = [7, 13, 47];
    let picker = WeightedRoundRobin.build(&weighted(&weights));
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 3, 100_000);
    assert_weight_shares(&got, &weights, |_| true, 0.001);
}

#[test]
fn weighted_round_robin_shares_match_weights_beyond_the_schedule() {
    // Weights that sum, reduced, past the precomputed schedule: the stride
    // scheduler takes over.
    let weights = [
        10_000, 9_999, 9_997, 9_991, 9_973, 9_967, 9_949, 9_931, 1, 500,
    ];
    let picker = WeightedRoundRobin.build(&weighted(&weights));
    assert!(format!("{picker:?}").contains("Stride"), "{picker:?}");
    let got = shares(
        picker.as_ref(),
        &PickContext::new(METHOD),
        weights.len(),
        200_000,
    );
    assert_weight_shares(&got, &weights, |_| true, 0.002);
}

#[test]
fn weighted_round_robin_interleaves_without_bursts() {
    // 5:1:1 → the heavy endpoint never runs more than ceil(5 / 2) = 3 times.
    let picker = WeightedRoundRobin.build(&weighted(&[500, 100, 100]));
    let ctx = PickContext::new(METHOD);
    let seq: Vec<usize> = (0..700).map(|_| picker.pick(&ctx).unwrap()).collect();
    assert!(longest_run(&seq, 0) <= 3, "{seq:?}");
    for window in seq.windows(7) {
        let heavy = window.iter().filter(|&&i| i == 0).count();
        assert_eq!(
            heavy, 5,
            "every 7 consecutive picks hold 5 of the heavy one"
        );
    }
    // A dominant endpoint among many light ones: runs of ceil(60 / 40) = 2.
    let mut weights = vec![10; 4];
    weights.insert(2, 60);
    let picker = WeightedRoundRobin.build(&weighted(&weights));
    let seq: Vec<usize> = (0..1_000).map(|_| picker.pick(&ctx).unwrap()).collect();
    assert!(longest_run(&seq, 2) <= 2, "{seq:?}");
}

fn longest_run(seq: &[usize], who: usize) -> usize {
    let mut best = 0;
    let mut run = 0;
    for &i in seq {
        run = if i == who { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[test]
fn weighted_round_robin_stays_proportional_among_eligible() {
    let weights = [100, 200, 300, 400];
    let picker = WeightedRoundRobin.build(&weighted(&weights));
    let not_2 = |i: usize| i != 2;
    let ctx = PickContext::new(METHOD).with_eligible(&not_2);
    let got = shares(picker.as_ref(), &ctx, 4, 70_000);
    assert_weight_shares(&got, &weights, not_2, 0.002);
}

#[test]
fn weighted_round_robin_is_exact_across_threads() {
    let weights = [100, 300];
    let picker = WeightedRoundRobin.build(&weighted(&weights));
    let counts: Vec<[usize; 2]> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let picker = &picker;
                s.spawn(move || {
                    let mut c = [0usize; 2];
                    for _ in 0..25_000 {
                        c[picker.pick(&PickContext::new(METHOD)).unwrap()] += 1;
                    }
                    c
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let light: usize = counts.iter().map(|c| c[0]).sum();
    // The shared sequence hands out whole periods of 4: 25,000 light picks.
    assert_eq!(light, 25_000);
}

// --------------------------------------------------------------------- random

#[test]
fn random_is_uniform() {
    let picker = Random.build(&uniform(4));
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 4, 100_000);
    assert_weight_shares(&got, &[1, 1, 1, 1], |_| true, 0.02);
    let not_0 = |i: usize| i != 0;
    let ctx = PickContext::new(METHOD).with_eligible(&not_0);
    let got = shares(picker.as_ref(), &ctx, 4, 100_000);
    assert_weight_shares(&got, &[1, 1, 1, 1], not_0, 0.02);
}

#[test]
fn weighted_random_shares_match_weights() {
    let weights = [100, 200, 300, 400];
    let picker = WeightedRandom.build(&weighted(&weights));
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 4, 100_000);
    assert_weight_shares(&got, &weights, |_| true, 0.02);
    let not_3 = |i: usize| i != 3;
    let ctx = PickContext::new(METHOD).with_eligible(&not_3);
    let got = shares(picker.as_ref(), &ctx, 4, 100_000);
    assert_weight_shares(&got, &weights, not_3, 0.02);
    // Extreme ratios.
    let weights = [1, 10_000];
    let picker = WeightedRandom.build(&weighted(&weights));
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 2, 100_000);
    assert_weight_shares(&got, &weights, |_| true, 0.002);
}

// ---------------------------------------------------------------- ring hash

/// Which instance id each of `keys` maps to.
fn key_owners(endpoints: &[Candidate], keys: u64) -> Vec<String> {
    let picker = RingHash::default().build(endpoints);
    (0..keys)
        .map(|k| {
            let i = picker.pick(&ctx_for_key(k)).unwrap();
            endpoints[i].instance().id().to_owned()
        })
        .collect()
}

#[test]
fn ring_hash_is_sticky_and_the_same_in_every_client() {
    let endpoints = uniform(8);
    let a = key_owners(&endpoints, 2_000);
    // Another client (another picker) with the set in another order.
    let mut reversed = endpoints.clone();
    reversed.reverse();
    assert_eq!(a, key_owners(&reversed, 2_000));
    let picker = RingHash::default().build(&endpoints);
    for k in 0..2_000 {
        let first = picker.pick(&ctx_for_key(k));
        assert_eq!(picker.pick(&ctx_for_key(k)), first);
    }
}

#[test]
fn ring_hash_moves_about_one_nth_of_keys_to_a_joining_instance() {
    const KEYS: u64 = 10_000;
    for n in [1, 3, 10, 40] {
        let before = key_owners(&uniform(n), KEYS);
        let mut grown = uniform(n);
        grown.push(endpoint("joiner", 100));
        let after = key_owners(&grown, KEYS);
        let moved: Vec<usize> = (0..before.len())
            .filter(|&k| before[k] != after[k])
            .collect();
        for &k in &moved {
            assert_eq!(after[k], "joiner", "key {k} moved between old instances");
        }
        let expected = KEYS as f64 / (n + 1) as f64;
        let got = moved.len() as f64;
        assert!(
            (0.5 * expected..=1.5 * expected).contains(&got),
            "{n} -> {}: {got} keys moved, expected about {expected}",
            n + 1
        );
    }
}

#[test]
fn ring_hash_moves_only_the_keys_of_a_leaving_or_ineligible_instance() {
    let endpoints = uniform(8);
    let before = key_owners(&endpoints, 5_000);
    let after = key_owners(&endpoints[1..], 5_000);
    for k in 0..before.len() {
        if before[k] != "inst-0" {
            assert_eq!(before[k], after[k]);
        }
    }
    // Ineligibility has the same effect as leaving, without a rebuild.
    let picker = RingHash::default().build(&endpoints);
    let not_0 = |i: usize| i != 0;
    for k in 0..5_000u64 {
        let ctx = ctx_for_key(k).with_eligible(&not_0);
        let i = picker.pick(&ctx).unwrap();
        assert_eq!(endpoints[i].instance().id(), after[k as usize]);
    }
}

#[test]
fn ring_hash_shares_follow_weights() {
    let keys = 100_000u64;
    let count = |endpoints: &[Candidate]| {
        let owners = key_owners(endpoints, keys);
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for o in owners {
            *by_id.entry(o).or_default() += 1;
        }
        let counts: Vec<f64> = endpoints
            .iter()
            .map(|c| by_id.get(c.instance().id()).copied().unwrap_or(0) as f64 / keys as f64)
            .collect();
        counts
    };
    // 160 virtual nodes for the heaviest instance: each share within ±3%
    // absolute.
    assert_weight_shares(&count(&uniform(10)), &[1; 10], |_| true, 0.03);
    let weights = [100, 300, 600];
    assert_weight_shares(&count(&weighted(&weights)), &weights, |_| true, 0.03);
}

#[test]
fn ring_hash_without_a_key_spreads_randomly() {
    let picker = RingHash::default().build(&uniform(4));
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 4, 40_000);
    assert_weight_shares(&got, &[1; 4], |_| true, 0.02);
}

// -------------------------------------------------------------------- maglev

fn maglev_owners(endpoints: &[Candidate], keys: u64) -> Vec<String> {
    let picker = Maglev::default().build(endpoints);
    (0..keys)
        .map(|k| {
            let i = picker.pick(&ctx_for_key(k)).unwrap();
            endpoints[i].instance().id().to_owned()
        })
        .collect()
}

#[test]
fn maglev_is_sticky_and_the_same_in_every_client() {
    let endpoints = uniform(8);
    let mut reversed = endpoints.clone();
    reversed.reverse();
    assert_eq!(
        maglev_owners(&endpoints, 2_000),
        maglev_owners(&reversed, 2_000)
    );
}

#[test]
fn maglev_moves_about_one_nth_of_keys_when_an_instance_joins() {
    const N: usize = 10;
    const KEYS: u64 = 10_000;
    let before = maglev_owners(&uniform(N), KEYS);
    let mut grown = uniform(N);
    grown.push(endpoint("joiner", 100));
    let after = maglev_owners(&grown, KEYS);
    let moved: Vec<usize> = (0..before.len())
        .filter(|&k| before[k] != after[k])
        .collect();
    let to_joiner = moved.iter().filter(|&&k| after[k] == "joiner").count() as f64;
    let expected = KEYS as f64 / (N + 1) as f64;
    assert!(
        (0.5 * expected..=1.5 * expected).contains(&to_joiner),
        "{to_joiner} keys moved to the new instance, expected about {expected}"
    );
    // Maglev trades a little disruption for its even spread: allow 2% of
    // keys to move between instances that stayed.
    let between_old = moved.len() as f64 - to_joiner;
    assert!(
        between_old <= 0.02 * KEYS as f64,
        "{between_old} keys moved between old instances"
    );
}

#[test]
fn maglev_shares_follow_weights() {
    let weights = [100, 300, 600];
    let endpoints = weighted(&weights);
    let picker = Maglev::default().build(&endpoints);
    let mut counts = [0usize; 3];
    for k in 0..100_000 {
        counts[picker.pick(&ctx_for_key(k)).unwrap()] += 1;
    }
    let got: Vec<f64> = counts.iter().map(|&c| c as f64 / 100_000.0).collect();
    assert_weight_shares(&got, &weights, |_| true, 0.01);
}

#[test]
fn maglev_rehashes_the_keys_of_an_ineligible_instance_consistently() {
    let endpoints = uniform(6);
    let picker = Maglev::default().build(&endpoints);
    let not_0 = |i: usize| i != 0;
    for k in 0..3_000u64 {
        let all = picker.pick(&ctx_for_key(k)).unwrap();
        let some = picker.pick(&ctx_for_key(k).with_eligible(&not_0)).unwrap();
        if all != 0 {
            assert_eq!(all, some, "key {k} moved though its instance is eligible");
        }
        assert_eq!(
            picker.pick(&ctx_for_key(k).with_eligible(&not_0)),
            Some(some)
        );
    }
}

// ------------------------------------------------------ load-aware policies

#[test]
fn least_request_prefers_fewer_in_flight() {
    let endpoints = uniform(2);
    for _ in 0..3 {
        endpoints[0].load().start();
    }
    let picker = LeastRequest.build(&endpoints);
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 2, 10_000);
    assert!(got[1] > 0.9, "{got:?}");

    // Among many, a busy endpoint never wins a comparison with an idle one.
    let endpoints = uniform(10);
    endpoints[4].load().start();
    let picker = LeastRequest.build(&endpoints);
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 10, 20_000);
    assert_eq!(got[4], 0.0);
}

#[test]
fn least_request_weighs_in_flight_by_weight() {
    // Twice the weight carries twice the concurrency: 3 in flight on weight
    // 200 (cost 4/200) beat 2 in flight on weight 100 (cost 3/100).
    let endpoints = weighted(&[100, 200]);
    endpoints[0].load().start();
    endpoints[0].load().start();
    for _ in 0..3 {
        endpoints[1].load().start();
    }
    let picker = LeastRequest.build(&endpoints);
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 2, 1_000);
    assert_eq!(got[1], 1.0);
}

#[test]
fn peak_ewma_prefers_the_faster_endpoint() {
    let endpoints = uniform(2);
    for (i, ms) in [(0, 50), (1, 5)] {
        for _ in 0..5 {
            endpoints[i].load().start();
            endpoints[i].load().end(Duration::from_millis(ms));
        }
    }
    let picker = PeakEwma.build(&endpoints);
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 2, 10_000);
    assert!(got[1] > 0.9, "{got:?}");

    // The same latency, but requests pile up on one: the other wins.
    let endpoints = uniform(2);
    for c in &endpoints {
        c.load().observe(Duration::from_millis(5));
    }
    endpoints[1].load().start();
    let picker = PeakEwma.build(&endpoints);
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 2, 10_000);
    assert!(got[0] > 0.9, "{got:?}");
}

#[test]
fn peak_ewma_reacts_to_a_latency_spike_at_once() {
    let endpoints = uniform(2);
    for c in &endpoints {
        for _ in 0..20 {
            c.load().observe(Duration::from_millis(5));
        }
    }
    // One slow response on endpoint 0 makes it the costlier at once.
    endpoints[0].load().observe(Duration::from_millis(200));
    let picker = PeakEwma.build(&endpoints);
    let got = shares(picker.as_ref(), &PickContext::new(METHOD), 2, 1_000);
    assert!(got[1] > 0.9, "{got:?}");
}

// -------------------------------------------------------------------- names

#[test]
fn by_name_round_trips_every_name_and_alias() {
    for name in POLICY_NAMES {
        assert_eq!(by_name(name).unwrap().name(), *name);
        assert_eq!(
            by_name(&name.to_uppercase().replace('_', "-"))
                .unwrap()
                .name(),
            *name
        );
    }
    for (alias, name) in POLICY_ALIASES {
        assert_eq!(by_name(alias).unwrap().name(), *name);
        assert!(POLICY_NAMES.contains(name));
    }
    assert_eq!(by_name(" rr ").unwrap().name(), "round_robin");
    assert_eq!(by_name("wrr").unwrap().name(), "weighted_round_robin");
    assert_eq!(by_name("p2c").unwrap().name(), "least_request");
    assert_eq!(by_name("consistent_hash").unwrap().name(), "ring_hash");
    assert_eq!(by_name("maglev").unwrap().name(), "maglev");
}

#[test]
fn by_name_rejects_garbage_listing_the_valid_names() {
    for garbage in ["", "fastest", "round robin", "rr2", "ring_hash;drop"] {
        let err = by_name(garbage).expect_err("rejected");
        let msg = err.to_string();
        assert_eq!(err.name, garbage);
        assert!(msg.contains(&format!("{garbage:?}")), "{msg}");
        for name in POLICY_NAMES {
            assert!(msg.contains(name), "{msg} lacks {name}");
        }
        assert!(msg.contains("p2c"), "{msg}");
    }
}
