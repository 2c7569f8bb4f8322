// The decode loop does not allocate: after a warm-up step, evaluating one token and sampling
// the next makes no heap allocation (scratch is sized when the Context is created).
#include <gtest/gtest.h>

#include "alloc_counter.h"
#include "engine/context.h"
#include "engine/sampler.h"
#include "model/model.h"
#include "test_paths.h"

namespace kvstash {
namespace {

TEST(DecodeLoop, MakesNoHeapAllocation) {
  auto m = Model::load(test::model_path("stories260K.gguf"));
  ASSERT_TRUE(m.is_ok());
  for (DType t : {DType::F16, DType::Q8_KV}) {
    for (int threads : {1, 2}) {
      ContextParams cp;
      cp.n_ctx = 256;
      cp.n_threads = threads;
      cp.type_k = cp.type_v = t;
      auto ctx = Context::create(**m, cp);
      ASSERT_TRUE(ctx.is_ok());
      SamplerParams sp;
      sp.seed = 7;
      Sampler sampler(sp, static_cast<int32_t>((*m)->hparams().n_vocab));
      const auto prompt = (*m)->vocab().tokenize("Once upon a time", true);
      auto lg = (*ctx)->eval(0, prompt.data(), static_cast<int32_t>(prompt.size()), 0);
      ASSERT_TRUE(lg.is_ok());
      int32_t pos = static_cast<int32_t>(prompt.size());
      int32_t tok = sampler.sample(lg.value());
      ASSERT_TRUE((*ctx)->eval(0, &tok, 1, pos++).is_ok());  // warm-up step
      const int64_t before = test::n_allocs();
      for (int i = 0; i < 64; ++i) {
        auto r = (*ctx)->eval(0, &tok, 1, pos++);
        ASSERT_TRUE(r.is_ok());
        tok = sampler.sample(r.value());
        sampler.accept(tok);
      }
      EXPECT_EQ(test::n_allocs(), before) << dtype_name(t) << ", " << threads << " threads";
    }
  }
}

}  // namespace
}  // namespace kvstash
