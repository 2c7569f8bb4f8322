// The slot scheduler without HTTP: batched slots are exact, prefix reuse follows llama.cpp's
// cache_n semantics (or better, with stored logits), slot choice, cancellation, slot actions.
#include "engine/scheduler.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include "test_paths.h"

namespace kvstash {
namespace {

struct Out {
  std::vector<int32_t> tokens;
  std::string text;
  GenSummary sum;
  Status error;
};

Out drain(GenStream& s, int max_tokens = -1) {
  Out o;
  for (;;) {
    GenEvent ev;
    if (!s.next(&ev, 5000)) {
      o.error = internal_error("timeout");
      return o;
    }
    if (ev.kind == GenEvent::Kind::Token) {
      o.tokens.push_back(ev.token.id);
      o.text += ev.token.text;
      if (max_tokens > 0 && int(o.tokens.size()) >= max_tokens) return o;
    } else if (ev.kind == GenEvent::Kind::Done) {
      o.sum = ev.summary;
      return o;
    } else {
      o.error = ev.error;
      return o;
    }
  }
}

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto m = Model::load(test::model_path("stories260K.gguf"));
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    model_ = std::move(m).value().release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void make(int n_slots, uint32_t n_ctx, int32_t n_batch = 2048, int wait_ms = 30000) {
    sched_.reset();
    ctx_.reset();
    ContextParams cp;
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_ubatch = std::min(n_batch, 512);
    cp.n_threads = 2;
    auto c = Context::create(*model_, cp);
    ASSERT_TRUE(c.is_ok());
    ctx_ = std::move(c).value();
    SchedulerParams sp;
    sp.n_slots = n_slots;
    sp.slot_wait_ms = wait_ms;
    sp.durable_saves = false;
    auto s = Scheduler::create(*ctx_, sp);
    ASSERT_TRUE(s.is_ok()) << s.status().to_string();
    sched_ = std::move(s).value();
  }
  GenRequest greedy(const std::string& text, int n_predict, int id_slot = -1) {
    GenRequest g;
    g.prompt = model_->vocab().tokenize(text, true);
    g.sampling.temperature = 0;
    g.n_predict = n_predict;
    g.id_slot = id_slot;
    return g;
  }
  void TearDown() override {
    sched_.reset();
    ctx_.reset();
  }
  static Model* model_;
  std::unique_ptr<Context> ctx_;
  std::unique_ptr<Scheduler> sched_;
};
Model* SchedulerTest::model_ = nullptr;

const char* kPrompts[] = {"Once upon a time", "The little girl", "One day, a big dog", "Tom and Sue went to",
                          "There was a cat named", "In the park, a boy", "The sun was shining and", "Mom said to Lily"};

TEST_F(SchedulerTest, BatchedSlotsAndChunkedPrefillMatchSoloRuns) {
  make(1, 256);
  std::vector<Out> solo;
  for (const char* p : kPrompts) solo.push_back(drain(*sched_->submit(greedy(p, 40))));
  make(4, 1024, /*n_batch=*/6);  // prompts are prefilled in chunks, next to other slots' decoding
  std::vector<std::shared_ptr<GenStream>> streams;
  for (const char* p : kPrompts) streams.push_back(sched_->submit(greedy(p, 40)));
  for (size_t i = 0; i < streams.size(); ++i) {
    Out o = drain(*streams[i]);
    ASSERT_TRUE(o.error.is_ok()) << o.error.to_string();
    EXPECT_EQ(o.tokens, solo[i].tokens) << kPrompts[i];
    EXPECT_EQ(o.text, solo[i].text);
    EXPECT_EQ(o.sum.n_predicted, 40);
  }
  const SchedulerMetrics m = sched_->metrics(false);
  EXPECT_GT(m.n_busy_slots_total, m.n_decode_total);  // steps really carried several slots
  EXPECT_LE(m.n_tokens_max, 6u);
}

TEST_F(SchedulerTest, PrefixReuseAndCacheN) {
  make(1, 512);
  const GenRequest g = greedy("Once upon a time, there was", 8);
  const int32_t n = int32_t(g.prompt.size());
  Out a = drain(*sched_->submit(g));
  EXPECT_EQ(a.sum.n_cached, 0);
  EXPECT_EQ(a.sum.n_prompt_processed, n);
  EXPECT_EQ(a.sum.n_tokens_cached, n + 7);
  // Whole prompt cached, more cached after it: the last prompt token is recomputed (llama.cpp).
  Out b = drain(*sched_->submit(g));
  EXPECT_EQ(b.sum.n_cached, n - 1);
  EXPECT_EQ(b.sum.n_prompt_processed, 1);
  EXPECT_EQ(b.tokens, a.tokens);
  // Prompt evaluated alone: its logits are kept, so the same prompt needs nothing computed.
  GenRequest only = g;
  only.n_predict = 0;
  Out c = drain(*sched_->submit(only));
  EXPECT_EQ(c.sum.n_predicted, 0);
  EXPECT_EQ(c.sum.n_tokens_cached, n);
  Out d = drain(*sched_->submit(g));
  EXPECT_EQ(d.sum.n_cached, n);
  EXPECT_EQ(d.sum.n_prompt_processed, 0);
  EXPECT_EQ(d.tokens, a.tokens);
  // cache_prompt false recomputes everything.
  GenRequest nc = g;
  nc.cache_prompt = false;
  Out e = drain(*sched_->submit(nc));
  EXPECT_EQ(e.sum.n_cached, 0);
  EXPECT_EQ(e.tokens, a.tokens);
}

TEST_F(SchedulerTest, SlotChoiceBestPrefixThenLeastRecentlyUsed) {
  make(3, 768);
  Out a = drain(*sched_->submit(greedy("Once upon a time, there was a dog", 4)));
  Out b = drain(*sched_->submit(greedy("The little girl had a red ball", 4)));
  EXPECT_NE(a.sum.id_slot, b.sum.id_slot);  // a fresh slot, not one sharing only BOS
  Out c = drain(*sched_->submit(greedy("The little girl had a blue hat", 4)));
  EXPECT_EQ(c.sum.id_slot, b.sum.id_slot);  // best prefix
  EXPECT_GT(c.sum.n_cached, 4);
  // Least recently used (cache_prompt false: no prefix counts): first the never used slot...
  GenRequest d = greedy("Zebras", 4);
  d.cache_prompt = false;
  Out dd = drain(*sched_->submit(d));
  EXPECT_NE(dd.sum.id_slot, a.sum.id_slot);
  EXPECT_NE(dd.sum.id_slot, c.sum.id_slot);
  // ...then a's slot, the one idle for longest.
  Out e = drain(*sched_->submit(d));
  EXPECT_EQ(e.sum.id_slot, a.sum.id_slot);
}

TEST_F(SchedulerTest, CancelledRequestFreesItsSlot) {
  make(1, 4096);
  GenRequest g = greedy("Once upon a time", -1);
  g.ignore_eos = true;
  auto s = sched_->submit(g);
  Out part = drain(*s, 5);
  EXPECT_EQ(part.tokens.size(), 5u);
  s->cancel();
  Out next = drain(*sched_->submit(greedy("The little girl", 4)));
  EXPECT_TRUE(next.error.is_ok());
  EXPECT_EQ(next.sum.n_predicted, 4);
}

// A consumer that goes away costs no decode step after the scheduler learns it. The probe is
// asked once when the request takes its slot, then before every step; it answers "alive" 11
// times: the placement and 10 steps, each sampling one token (the 5-token prompt is one step).
TEST_F(SchedulerTest, DepartedConsumerIsDroppedBeforeTheNextDecodeStep) {
  make(1, 4096);
  GenRequest g = greedy("Once upon a time", -1);
  ASSERT_EQ(g.prompt.size(), 5u);
  g.ignore_eos = true;
  std::atomic<int> calls{0};
  auto s = sched_->submit(g, [&calls] { return calls.fetch_add(1) < 11; });
  Out o = drain(*s);
  EXPECT_EQ(o.tokens.size(), 10u);
  EXPECT_EQ(o.error.code(), StatusCode::IO) << o.error.to_string();
  EXPECT_TRUE(s->cancelled());
  EXPECT_EQ(calls.load(), 12);  // never asked again after "gone"
  const SlotSnapshot snap = sched_->slots()[0];  // published before the error event
  EXPECT_FALSE(snap.is_processing);
  EXPECT_TRUE(snap.cancelled);
  EXPECT_EQ(snap.n_decoded, 10);
  EXPECT_EQ(snap.n_decode_steps, 10);
  EXPECT_EQ(snap.n_cached_tokens, 5 + 9);  // the 10th token was sampled, never evaluated
  EXPECT_GT(snap.t_last_decode_us, 0);
  EXPECT_EQ(sched_->metrics(false).requests_cancelled, 1u);
  EXPECT_EQ(sched_->metrics(false).tokens_predicted_total, 0u);  // only finished requests count
  // The slot is reusable and its cache still serves the shared prefix.
  Out next = drain(*sched_->submit(greedy("Once upon a time", 4)));
  ASSERT_TRUE(next.error.is_ok()) << next.error.to_string();
  EXPECT_EQ(next.sum.n_cached, 4);
  EXPECT_FALSE(sched_->slots()[0].cancelled);
}

// drop_probe(): once it returns the probe is never called again; a queued request whose consumer
// cancelled never takes a slot and is counted as cancelled.
TEST_F(SchedulerTest, DroppedProbeIsNotCalledAndCancelledQueuedRequestsNeverRun) {
  make(1, 4096);
  GenRequest g = greedy("Once upon a time", -1);
  g.ignore_eos = true;
  std::atomic<int> calls{0};
  auto running = sched_->submit(g, [&calls] { calls.fetch_add(1); return true; });
  Out first = drain(*running, 3);
  ASSERT_EQ(first.tokens.size(), 3u);
  running->drop_probe();
  const int after_drop = calls.load();
  auto queued = sched_->submit(greedy("The little girl", 4));
  queued->cancel();
  drain(*running, 20);
  EXPECT_EQ(calls.load(), after_drop);
  EXPECT_TRUE(sched_->slots()[0].is_processing);
  running->cancel();
  Out q = drain(*queued);
  EXPECT_EQ(q.error.code(), StatusCode::IO);
  EXPECT_TRUE(q.tokens.empty());
  Out next = drain(*sched_->submit(greedy("Tom and Sue went to", 4)));
  EXPECT_TRUE(next.error.is_ok());
  EXPECT_EQ(sched_->metrics(false).requests_cancelled, 2u);
  EXPECT_EQ(sched_->metrics(false).requests_total, 3u);
}

TEST_F(SchedulerTest, SlotActionsSaveRestoreEraseAndBusyBound) {
  make(2, 512, 2048, /*wait_ms=*/200);
  const std::string dir = ::testing::TempDir() + "/kvstash_sched_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  Out a = drain(*sched_->submit(greedy("Once upon a time", 8, 0)));
  SlotActionResult sv = sched_->save_slot(0, dir + "/a.bin");
  ASSERT_TRUE(sv.status.is_ok()) << sv.status.to_string();
  EXPECT_EQ(sv.n_tokens, 12);
  EXPECT_EQ(sv.n_bytes, std::filesystem::file_size(dir + "/a.bin"));
  SlotActionResult rs = sched_->restore_slot(1, dir + "/a.bin");
  ASSERT_TRUE(rs.status.is_ok());
  EXPECT_EQ(rs.n_tokens, 12);
  EXPECT_EQ(sched_->slots()[1].n_cached_tokens, 12);
  // A failed restore changes nothing.
  SlotActionResult bad = sched_->restore_slot(1, dir + "/missing.bin");
  EXPECT_FALSE(bad.status.is_ok());
  EXPECT_FALSE(bad.busy);
  EXPECT_EQ(sched_->slots()[1].n_cached_tokens, 12);
  Out again = drain(*sched_->submit(greedy("Once upon a time", 8, 1)));
  EXPECT_EQ(again.tokens, a.tokens);
  EXPECT_EQ(again.sum.n_prompt_processed, 1);
  SlotActionResult er = sched_->erase_slot(1);
  EXPECT_EQ(er.n_tokens, 12);
  EXPECT_EQ(sched_->slots()[1].n_cached_tokens, 0);
  EXPECT_FALSE(sched_->erase_slot(2).status.is_ok());
  const SchedulerMetrics m = sched_->metrics(false);
  EXPECT_EQ(m.slot_save_ok, 1u);
  EXPECT_EQ(m.slot_restore_ok, 1u);
  EXPECT_EQ(m.slot_restore_fail, 1u);
  EXPECT_GT(m.slot_bytes_written, 0u);
  EXPECT_EQ(m.slot_bytes_read, m.slot_bytes_written);
  std::filesystem::remove_all(dir);
}

TEST_F(SchedulerTest, SlotActionOnABusySlotWaitsWithABound) {
  make(1, 32768, 2048, /*wait_ms=*/200);
  const std::string dir = ::testing::TempDir() + "/kvstash_sched_busy_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  GenRequest g = greedy("The little girl", -1, 0);
  g.ignore_eos = true;
  auto s = sched_->submit(g);
  drain(*s, 2);
  const auto t0 = std::chrono::steady_clock::now();
  SlotActionResult busy = sched_->save_slot(0, dir + "/busy.bin");
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(200));
  EXPECT_TRUE(busy.busy);
  EXPECT_FALSE(busy.status.is_ok());
  EXPECT_EQ(sched_->erase_slot(0).busy, true);
  s->cancel();
  SlotActionResult after = sched_->save_slot(0, dir + "/busy.bin");
  EXPECT_TRUE(after.status.is_ok()) << after.status.to_string();
  EXPECT_GT(after.n_tokens, 3);
  const SchedulerMetrics m = sched_->metrics(false);
  EXPECT_EQ(m.slot_save_ok, 1u);
  EXPECT_EQ(m.slot_save_fail, 1u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvstash
