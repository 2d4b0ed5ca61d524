//! Picking allocates nothing: every policy, at every benchmark size, with
//! and without ineligible endpoints, and the feedback after a call.
//!
//! A counting global allocator counts the allocations of the current thread
//! only, so other tests running at the same time do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use fyerrpc::balance::{Feedback, PickContext, Picker};
use fyerrpc_benches::picking::{candidates, keys, policies, METHOD, SIZES};

struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
}

const PICKS: usize = 10_000;

fn exercise(picker: &dyn Picker, n: usize, keys: &[u64]) {
    let odd_only = |i: usize| i % 2 == 1 || n == 1;
    for (k, key) in keys.iter().enumerate().take(PICKS) {
        let ctx = PickContext::new(METHOD).with_hash(*key);
        let ctx = if k % 2 == 0 {
            ctx
        } else {
            ctx.with_eligible(&odd_only).with_attempt(1)
        };
        let picked = picker.pick(&ctx);
        assert!(picked.is_some_and(|i| i < n), "a pick among {n} endpoints");
        if let Some(i) = picked {
            picker.feedback(
                i,
                &Feedback {
                    latency: Duration::from_micros(200 + (k % 7) as u64 * 100),
                    success: k % 13 != 0,
                },
            );
        }
    }
}

#[test]
fn picking_and_feedback_allocate_nothing() {
    let keys = keys(PICKS);
    let policies = policies();
    assert_eq!(policies.len(), fyerrpc::balance::POLICY_NAMES.len());
    for (name, balancer) in &policies {
        for n in SIZES {
            let endpoints = candidates(n);
            let picker = balancer.build(&endpoints);
            // First use may initialise process-wide state (clock epoch,
            // thread-local random generator): not a per-pick cost.
            exercise(&*picker, n, &keys[..16]);
            let count = allocations(|| exercise(&*picker, n, &keys));
            assert_eq!(
                count, 0,
                "{name} at {n} instances allocated {count} times in {PICKS} picks"
            );
        }
    }
}

#[test]
fn the_counter_sees_allocations() {
    let count = allocations(|| {
        let v: Vec<u64> = std::hint::black_box(Vec::with_capacity(8));
        drop(v);
    });
    assert_eq!(count, 1);
}
